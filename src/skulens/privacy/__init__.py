"""Privacy by design for uploaded photos. By default nothing here runs: the server keeps uploads in
memory and drops them. When an operator opts in to storage (``skulens serve --store-uploads DIR``):

- ``scrub``: the stored file is re-encoded from pixels only, so no EXIF/XMP/IPTC/GPS/ICC/comments;
- ``faces``: faces are pixelated first (``--blur-faces``, OpenCV's bundled Haar cascades);
- ``crypto``: the file is sealed with AES-256-GCM (``--encrypt-at-rest``, key in ``SKULENS_STORAGE_KEY``);
- ``store``: random file names (never the client's), and ``purge`` for the retention period
  (``skulens privacy purge``, cron-able; the server also purges as it stores).

Nothing is imported here, so ``skulens --help`` does not pay for PIL, NumPy or OpenCV.
"""
