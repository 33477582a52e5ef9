// On-device preprocessing: a shopper's photo -> the model input, in the browser, so the photo never
// leaves the device. The server does the same in Python (src/skulens/data/images.py::load_image, then
// src/skulens/data/transforms.py::to_model_array); this module ports that one path step by step,
// because the browser's answer must match the server's (same top-1, probabilities within 0.02):
//
//   bytes -> size -> header: format, pixels, aspect ratio (nothing decoded yet) -> truncated? ->
//   decode as stored (the JPEG draft: at 1/2, 1/4 or 1/8 scale) -> EXIF orientation as Pillow reads
//   it -> alpha on white -> grey (in_chans 1) -> pad to square ("pad") -> shorter side resized
//   (Pillow's BILINEAR convolution, ported) -> centre crop -> /255, (x - mean) / std -> CHW float32.
//
// A refusal throws ImageError with the line the server answers for the same bytes (the API sends
// str(ImageError) from load_image, which names an upload "image"), so both modes read alike.
// tests/test_device_preprocess.py runs this module in Chromium against Python: the same float32 input,
// bit for bit, for JPEG (Chromium's libjpeg-turbo decodes as Pillow's), PNG, WebP, GIF and BMP.
//
// Plain ES module, no build step, no dependencies. Exports: ImageError, readImageHeader,
// imageToModelInput, DEFAULT_LIMITS.

const NAME = "image"; // load_image names bytes "image": every server message starts "image: "

/** An image that cannot be used; `message` is the server's line for the same problem. */
export class ImageError extends Error {
  /**
   * @param {string} message
   * @param {string} [code] "bad_image" (the server's error code), or "unsupported_on_device" for a
   *   photo the server reads but this browser cannot decode (TIFF): the page may offer the server.
   */
  constructor(message, code = "bad_image") {
    super(message);
    this.name = "ImageError";
    this.code = code;
  }
}

/** The server's defaults (images.py: DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, MAX_ASPECT_RATIO). */
export const DEFAULT_LIMITS = Object.freeze({
  max_bytes: 50 * 1024 * 1024,
  max_pixels: 50_000_000,
  max_aspect_ratio: 50,
});

// Pillow refuses at open anything over 2 * Image.MAX_IMAGE_PIXELS (images.py sets 200,000,000) with
// its DecompressionBombError, before skulens' own, clearer, pixel check.
const PILLOW_BOMB_PIXELS = 2 * 200_000_000;
// PngImagePlugin.MAX_TEXT_CHUNK: compressed text / ICC chunks that inflate past it are refused at open.
const PNG_MAX_TEXT_CHUNK = 1024 * 1024;

const fail = (detail, code) => new ImageError(`${NAME}: ${detail}`, code);
const notAnImage = () => fail("not an image or an unsupported format");
const headerError = (detail) => fail(`cannot read image header (${detail})`);
const corrupt = (detail) => fail(`image data is truncated or corrupt (${detail})`);
// Pillow's text for a cut-off file is "image file is truncated (N bytes not processed)" where N is what
// its decoder had buffered: the same sentence, less a count only that decoder knows.
const truncated = () => corrupt("image file is truncated");
// Pillow's words when its decoder gives up on the data (the browser's decoder just did).
const undecodable = () => corrupt("broken data stream when reading image file");

/** Python's f"{n:,}". */
function thousands(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// --- bytes ---------------------------------------------------------------------------------------

const u16be = (b, i) => (b[i] << 8) | b[i + 1];
const u16le = (b, i) => b[i] | (b[i + 1] << 8);
const u32be = (b, i) => ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]) >>> 0;
const u32le = (b, i) => (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0;
const ascii = (b, i, n) => String.fromCharCode(...b.subarray(i, i + n));
const latin1 = (b) => new TextDecoder("latin1").decode(b);
const startsWith = (b, sig, at = 0) => sig.length + at <= b.length && sig.every((v, k) => b[at + k] === v);
const bytesOf = (text) => Array.from(text, (c) => c.charCodeAt(0));

/** A cursor over the file like Pillow's `fp`: reads past the end come back short, never throw. */
class Reader {
  constructor(bytes, pos = 0) {
    this.b = bytes;
    this.pos = pos;
  }
  get left() {
    return this.b.length - this.pos;
  }
  read(n) {
    const out = this.b.subarray(this.pos, Math.min(this.b.length, this.pos + Math.max(0, n)));
    this.pos += out.length;
    return out;
  }
  /** ImageFile._safe_read: all `n` bytes or "Truncated File Read" (a header error). */
  safeRead(n) {
    if (n <= 0) return this.b.subarray(this.pos, this.pos);
    if (this.left < n) throw headerError("Truncated File Read");
    return this.read(n);
  }
}

let crcTable = null;
function crc32(parts) {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (const part of parts) for (let i = 0; i < part.length; i++) c = crcTable[(c ^ part[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * Inflate a zlib stream that may be cut off, stopping once more than `cap` bytes came out; returns
 * what came out ({size, bytes}; bytes only when `keep`). DecompressionStream errors at close on a
 * cut-off stream, and an errored stream drops the output still queued, so the stream is never
 * closed: each piece is written once the previous output has been read (writer.ready). A piece
 * that errors loses its own output: small pieces keep more of a corrupt stream.
 */
async function inflate(data, cap = Infinity, keep = false, piece = 65536) {
  const stream = new DecompressionStream("deflate");
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const chunks = [];
  let size = 0;
  const pump = (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return;
        size += value.length;
        if (keep) chunks.push(value);
      }
    } catch {
      // corrupt data: what came out before counts
    }
  })();
  try {
    for (let i = 0; i < data.length && size <= cap; i += piece) {
      await writer.ready;
      await writer.write(data.subarray(i, i + piece));
    }
    await writer.ready;
  } catch {
    // corrupt data (the stream errored): what came out before counts
  }
  await new Promise((resolve) => setTimeout(resolve, 0));
  reader.cancel().catch(() => {});
  writer.abort().catch(() => {});
  await pump;
  return { size, bytes: keep ? concat(chunks) : null };
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

// --- headers: which format, how many pixels (nothing is decoded) ---------------------------------

const JPEG_SOF = new Set([0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf, 0xde]);
const JPEG_NO_SEGMENT = new Set([0xc8, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9]);
for (let m = 0xf0; m <= 0xfd; m++) JPEG_NO_SEGMENT.add(m);

/**
 * EXIF orientation (tag 0x0112 of IFD0) in `exif` (a view into the file): its value, and where the
 * value lies in the file (so the decode can neutralise it, see stillBytes); null when absent.
 */
function exifOrientation(bytes, exif) {
  const skip = startsWith(exif, bytesOf("Exif\0\0")) ? 6 : 0;
  const tiff = exif.subarray(skip);
  if (tiff.length < 8) return null;
  const le = tiff[0] === 0x49 && tiff[1] === 0x49;
  if (!le && !(tiff[0] === 0x4d && tiff[1] === 0x4d)) return null;
  const u16 = le ? u16le : u16be;
  const u32 = le ? u32le : u32be;
  const ifd = u32(tiff, 4);
  if (ifd + 2 > tiff.length) return null;
  const count = u16(tiff, ifd);
  for (let k = 0; k < count; k++) {
    const at = ifd + 2 + 12 * k;
    if (at + 12 > tiff.length) break;
    if (u16(tiff, at) !== 0x0112) continue;
    const long = u16(tiff, at + 2) === 4;
    const value = long ? u32(tiff, at + 8) : u16(tiff, at + 8);
    const one = long ? (le ? [1, 0, 0, 0] : [0, 0, 0, 1]) : le ? [1, 0] : [0, 1];
    return { value, patch: { at: tiff.byteOffset - bytes.byteOffset + at + 8, bytes: one } };
  }
  return null;
}

/**
 * Image.getexif() and exif_transpose: the orientation Pillow turns the photo by (EXIF IFD0, else
 * XMP's tiff:Orientation), and the patches that set every EXIF orientation in the file to 1.
 * `exifs`: the file's EXIF blocks, the one Pillow reads first.
 */
function pillowOrientation(bytes, exifs, xmp, chunkOf = () => null) {
  const found = exifs.map((exif) => exifOrientation(bytes, exif));
  const patches = found.flatMap((f, k) => (f ? [{ ...f.patch, chunk: chunkOf(k) }] : []));
  if (found[0]) return { orientation: found[0].value, from: "exif", patches };
  const match = xmp && /tiff:Orientation(="|>)([0-9])/.exec(latin1(xmp));
  return { orientation: match ? Number(match[2]) : 1, from: match ? "xmp" : null, patches };
}

/** The number of images an MPF (multi-picture) APP2 segment declares (tag 0xB001). */
function mpfImageCount(mpf) {
  try {
    const le = mpf[0] === 0x49;
    const u16 = le ? u16le : u16be;
    const u32 = le ? u32le : u32be;
    const ifd = u32(mpf, 4);
    const count = u16(mpf, ifd);
    for (let k = 0; k < count; k++) {
      const at = ifd + 2 + 12 * k;
      if (at + 12 > mpf.length) return 0;
      if (u16(mpf, at) === 0xb001) return u32(mpf, at + 8);
    }
  } catch {
    /* unreadable: treated as a plain JPEG */
  }
  return 0;
}

/** Pillow's JpegImageFile._open: walk the markers up to the first SOS, as forgiving as Pillow is. */
function parseJpeg(bytes) {
  const fp = new Reader(bytes, 3);
  let cur = 0xff;
  let width = 0;
  let height = 0;
  let layers = 0;
  const exifs = [];
  let xmp = null;
  let mpImages = 0;
  let ultraHdr = false;
  const i16 = (seg, at) => {
    if (at + 2 > seg.length) throw notAnImage(); // struct.error: Pillow tries the next plugin
    return u16be(seg, at);
  };
  const segment = () => fp.safeRead(i16(fp.read(2), 0) - 2);
  const next = () => (fp.left ? fp.read(1)[0] : null);
  let scanStart = null;
  // the file ending before the first scan ends the walk quietly: Pillow opens it, then cannot load it
  while (cur !== null) {
    if (cur !== 0xff) {
      cur = next(); // non-0xFF junk between segments: skipped a byte at a time
      continue;
    }
    if (!fp.left) break;
    const marker = fp.read(1)[0];
    if (marker >= 0xc0 && marker <= 0xfe) {
      if (!JPEG_NO_SEGMENT.has(marker)) {
        const s = segment();
        if (JPEG_SOF.has(marker)) {
          width = i16(s, 3);
          height = i16(s, 1);
          if (s[0] !== 8) throw notAnImage(); // "cannot handle N-bit layers"
          if (s.length < 6) throw notAnImage();
          layers = s[5];
          if (![1, 3, 4].includes(layers)) throw notAnImage();
        } else if (marker === 0xdb) {
          // DQT: Pillow refuses a table shorter than it declares
          for (let at = 0; at < s.length; ) {
            const size = 1 + (s[at] >> 4 === 0 ? 1 : 2) * 64;
            if (s.length - at < size) throw notAnImage();
            at += size;
          }
        } else if (marker === 0xe0 && startsWith(s, bytesOf("JFIF"))) {
          i16(s, 5); // the JFIF version Pillow reads
        } else if (marker === 0xee && startsWith(s, bytesOf("Adobe"))) {
          i16(s, 5); // the Adobe version Pillow reads
        } else if (marker === 0xe1) {
          if (startsWith(s, bytesOf("Exif\0\0"))) exifs.push(s); // Pillow reads the first one's IFD0
          if (startsWith(s, bytesOf("http://ns.adobe.com/xap/1.0/\0"))) xmp = s;
          if (latin1(s).includes(' hdrgm:Version="')) ultraHdr = true; // Ultra HDR: Pillow keeps it JPEG
        } else if (marker === 0xe2 && startsWith(s, bytesOf("MPF\0"))) {
          mpImages = mpfImageCount(s.subarray(4));
        }
      }
      if (marker === 0xda) {
        scanStart = fp.pos; // start of scan: the header ends here
        break;
      }
      cur = next();
    } else if (marker === 0xff) {
      cur = 0xff; // fill byte
    } else if (marker === 0x00) {
      cur = next();
    } else {
      throw notAnImage(); // "no marker found"
    }
  }
  if (!layers || width <= 0 || height <= 0) throw notAnImage();
  // Pillow opens a JPEG that carries more than one picture (MPF) as "MPO": never drafted (below).
  const format = mpImages > 1 && !ultraHdr ? "MPO" : "JPEG";
  const orientation = pillowOrientation(bytes, exifs, xmp);
  return { format: "JPEG", width, height, pillowFormat: format, scanStart, ...orientation };
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const PNG_CHANNELS = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
const PNG_DEPTHS = { 0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16] };
// Adam7 interlacing: each pass's first column and row, and its steps
const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]];
const NOT_INTERLACED = [[0, 0, 1, 1]];
const isChunkId = (b, at) => b.length >= at + 4 && /^\w{4}$/.test(ascii(b, at, 4)); // PngImagePlugin.is_cid

/** Pillow's PngImageFile._open: chunks up to the first IDAT, each checked against its CRC. */
function parsePng(bytes) {
  const fp = new Reader(bytes, 8);
  let ihdr = null;
  let endsAt = "";
  const stripped = []; // [start, end) of tRNS chunks that Pillow ignores (see stillBytes)
  const compressed = []; // zlib payloads of iCCP / zTXt / iTXt chunks, checked for bombs at open
  let idat = -1;
  for (;;) {
    const head = fp.read(8);
    if (head.length < 8 || !isChunkId(head, 4)) throw notAnImage(); // "broken PNG file"
    const length = u32be(head, 0);
    const id = ascii(head, 4, 4);
    if (id === "IDAT" || id === "fdAT" || id === "IEND") {
      endsAt = id;
      idat = fp.pos - 8;
      break;
    }
    const start = fp.pos - 8;
    const data = fp.safeRead(length);
    if (id === "IHDR") {
      if (length < 13) throw headerError("Truncated IHDR chunk");
      const [width, height] = [u32be(data, 0), u32be(data, 4)];
      ihdr = { width, height, depth: data[8], colourType: data[9], interlace: data[12] };
      if (data[11]) throw notAnImage(); // "unknown filter category"
    } else if (id === "tRNS") {
      if (ihdr && (ihdr.colourType === 0 || ihdr.colourType === 2) && length < (ihdr.colourType === 2 ? 6 : 2)) {
        throw headerError("Truncated tRNS chunk");
      }
      stripped.push([start, start + 12 + length]);
    } else if (id === "iCCP" || id === "zTXt") {
      const zero = data.indexOf(0);
      if (zero >= 0 && data[zero + 1] === 0) compressed.push(data.subarray(zero + 2));
    } else if (id === "iTXt") {
      const zero = data.indexOf(0);
      if (zero >= 0 && data[zero + 1] === 1 && data[zero + 2] === 0) {
        const rest = data.subarray(zero + 3);
        const lang = rest.indexOf(0);
        const key = lang < 0 ? -1 : rest.indexOf(0, lang + 1);
        if (key >= 0) compressed.push(rest.subarray(key + 1));
      }
    }
    const crc = fp.read(4);
    if (crc.length < 4 || u32be(crc, 0) !== crc32([head.subarray(4), data])) throw notAnImage(); // bad checksum
  }
  if (!ihdr || !(PNG_DEPTHS[ihdr.colourType] || []).includes(ihdr.depth)) throw notAnImage();
  if (ihdr.width <= 0 || ihdr.height <= 0) throw notAnImage();
  // Pillow keeps a grey or RGB PNG's single transparent colour (tRNS) as info, never as alpha: the
  // photo stays opaque. The browser would punch it out, so the chunk is dropped before decoding.
  const ignoredTrns = ihdr.colourType === 0 || ihdr.colourType === 2 ? stripped : [];
  return {
    format: "PNG",
    width: ihdr.width,
    height: ihdr.height,
    ihdr,
    idat,
    noImageData: endsAt === "IEND",
    ignoredTrns,
    compressed,
    ...pngOrientation(bytes),
  };
}

/** PNG: eXIf, else an XMP text chunk ("XML:com.adobe.xmp"), before or after the image data. */
function pngOrientation(bytes) {
  const exifs = [];
  const chunks = [];
  let xmp = null;
  for (let pos = 8; pos + 12 <= bytes.length; ) {
    const length = u32be(bytes, pos);
    const id = ascii(bytes, pos + 4, 4);
    const data = bytes.subarray(pos + 8, Math.min(bytes.length, pos + 8 + length));
    if (id === "eXIf" && pos + 12 + length <= bytes.length) {
      exifs.unshift(data); // Pillow keeps the last eXIf chunk
      chunks.unshift({ start: pos, length });
    }
    if ((id === "iTXt" || id === "tEXt") && startsWith(data, bytesOf("XML:com.adobe.xmp\0"))) xmp = data;
    if (id === "IEND") break;
    pos += 12 + length;
  }
  // a patched eXIf chunk gets its CRC recomputed (see stillBytes)
  return pillowOrientation(bytes, exifs, xmp, (k) => chunks[k]);
}

/** Pillow's GifImageFile._open and _seek(0): the screen, then blocks up to the first frame. */
function parseGif(bytes) {
  if (bytes.length < 13) throw notAnImage();
  let width = u16le(bytes, 6);
  let height = u16le(bytes, 8);
  const flags = bytes[10];
  const fp = new Reader(bytes, 13);
  if (flags & 0x80) fp.read(3 << ((flags & 7) + 1));
  const subBlock = () => {
    const n = fp.read(1);
    return n.length && n[0] ? fp.read(n[0]) : null;
  };
  let frame = null;
  let s = fp.read(1);
  if (!s.length || s[0] === 0x3b) throw notAnImage(); // no frame
  for (;;) {
    if (!s.length) s = fp.read(1);
    if (!s.length || s[0] === 0x3b) throw notAnImage(); // "image not found in GIF frame"
    if (s[0] === 0x21) {
      const label = fp.read(1);
      if (!label.length) throw notAnImage();
      let block = subBlock();
      // a graphic control block too short for the fields Pillow reads
      if (label[0] === 0xf9 && block && (block.length < 3 || (block[0] & 1 && block.length < 4))) throw notAnImage();
      if (label[0] === 0xfe) while (block) block = subBlock();
      else while (subBlock());
    } else if (s[0] === 0x2c) {
      const d = fp.read(9);
      if (d.length < 9) throw notAnImage();
      const x1 = u16le(d, 0) + u16le(d, 4);
      const y1 = u16le(d, 2) + u16le(d, 6);
      // a first frame larger than the screen grows the image, as in Pillow
      if (x1 > width || y1 > height) [width, height] = [Math.max(x1, width), Math.max(y1, height)];
      frame = { width: u16le(d, 4), height: u16le(d, 6) };
      if (d[8] & 0x80) fp.read(3 << ((d[8] & 7) + 1));
      if (!fp.read(1).length) throw notAnImage(); // LZW code size
      break;
    }
    s = new Uint8Array(0);
  }
  if (width <= 0 || height <= 0) throw notAnImage();
  return { format: "GIF", width, height, frameData: fp.pos, frame };
}

/** WebP: RIFF, then VP8 / VP8L / VP8X; EXIF and XMP chunks for the orientation. */
function parseWebp(bytes) {
  const kind = ascii(bytes, 12, 4);
  if (!["VP8 ", "VP8L", "VP8X"].includes(kind)) throw notAnImage();
  // WebPImagePlugin._get_size: the canvas size from the header, checked for a bomb before libwebp's
  // demuxer sees the file (and refuses one shorter than its RIFF size: "could not create decoder object")
  let size = null;
  const u24le = (i) => bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16);
  if (kind === "VP8X" && bytes.length >= 30) {
    size = [1 + u24le(24), 1 + u24le(27)];
  } else if (kind === "VP8L" && bytes.length >= 25 && bytes[20] === 0x2f) {
    const bits = u32le(bytes, 21);
    size = [1 + (bits & 0x3fff), 1 + ((bits >>> 14) & 0x3fff)];
  } else if (kind === "VP8 " && bytes.length >= 30 && startsWith(bytes, [0x9d, 0x01, 0x2a], 23)) {
    size = [u16le(bytes, 26) & 0x3fff, u16le(bytes, 28) & 0x3fff];
  }
  if (size) checkBomb(size[0], size[1]);
  if (!size || u32le(bytes, 4) + 8 > bytes.length) throw headerError("could not create decoder object");
  const [width, height] = size;
  const exifs = [];
  let xmp = null;
  for (let pos = 12; pos + 8 <= bytes.length; ) {
    const length = u32le(bytes, pos + 4);
    const id = ascii(bytes, pos, 4);
    if (id === "EXIF") exifs.push(bytes.subarray(pos + 8, pos + 8 + length));
    if (id === "XMP ") xmp = bytes.subarray(pos + 8, pos + 8 + length);
    pos += 8 + length + (length & 1); // RIFF chunks are padded to even sizes
  }
  return { format: "WEBP", width, height, ...pillowOrientation(bytes, exifs, xmp) };
}

/** Pillow's BmpImageFile._bitmap, the parts that decide size, support and where the pixels are. */
function parseBmp(bytes) {
  const fp = new Reader(bytes, 10);
  const offsetField = fp.read(4);
  const sizeField = fp.read(4);
  if (offsetField.length < 4 || sizeField.length < 4) throw notAnImage();
  const headerSize = u32le(sizeField, 0);
  const h = fp.safeRead(headerSize - 4);
  let width;
  let height;
  let bits;
  let compression = 0;
  let colours = 0;
  if (headerSize === 12) {
    [width, height, bits] = [u16le(h, 0), u16le(h, 2), u16le(h, 6)];
  } else if ([40, 52, 56, 64, 108, 124].includes(headerSize)) {
    width = u32le(h, 0);
    height = h[7] === 0xff ? 2 ** 32 - u32le(h, 4) : u32le(h, 4); // top-down rows: negative height
    bits = u16le(h, 10);
    compression = u32le(h, 12);
    colours = u32le(h, 28);
  } else {
    throw headerError(`Unsupported BMP header type (${headerSize})`);
  }
  if (![1, 4, 8, 16, 24, 32].includes(bits)) throw headerError(`Unsupported BMP pixel depth (${bits})`);
  if (![0, 1, 2, 3].includes(compression)) throw headerError(`Unsupported BMP compression (${compression})`);
  if (bits <= 8 && !(colours === 0 || colours <= 65536)) throw headerError(`Unsupported BMP Palette size (${colours})`);
  const rowBytes = Math.ceil((width * bits) / 32) * 4;
  const pixelsAt = u32le(offsetField, 0);
  // 32-bit BI_RGB: Pillow reads the fourth byte as padding ("BGRX"), browsers as alpha
  const ignoredAlpha = bits === 32 && compression === 0;
  const raw = compression === 0 || compression === 3; // uncompressed: its size is known
  return { format: "BMP", width, height, pixelsAt, raw, rowBytes, ignoredAlpha };
}

/** TIFF: the first IFD's ImageWidth / ImageLength (BigTIFF's 64-bit layout too). */
function parseTiff(bytes) {
  const le = bytes[0] === 0x49;
  const u16 = le ? u16le : u16be;
  const u32 = le ? u32le : u32be;
  const big = u16(bytes, 2) === 43;
  let width = 0;
  let height = 0;
  try {
    const ifd = big ? u32(bytes, 8) : u32(bytes, 4);
    const count = big ? u32(bytes, ifd) : u16(bytes, ifd);
    const entry = big ? 20 : 12;
    for (let k = 0; k < count; k++) {
      const at = ifd + (big ? 8 : 2) + entry * k;
      if (at + entry > bytes.length) break;
      const tag = u16(bytes, at);
      const field = at + (big ? 12 : 8);
      const value = u16(bytes, at + 2) === 3 ? u16(bytes, field) : u32(bytes, field); // SHORT or LONG
      if (tag === 256) width = value;
      if (tag === 257) height = value;
    }
  } catch {
    /* falls through to "not an image" */
  }
  if (!(width > 0 && height > 0)) throw notAnImage();
  return { format: "TIFF", width, height };
}

/** Formats Pillow opens but skulens refuses (images.py ALLOWED_FORMATS), by their magic bytes;
 * TGA has none, so its header fields are checked the way Pillow's TgaImageFile does. */
function disallowedFormat(b) {
  const at = (sig, i = 0) => startsWith(b, typeof sig === "string" ? bytesOf(sig) : sig, i);
  if (b.length >= 2 && b[0] === 0x50 && "0123456fy".includes(String.fromCharCode(b[1]))) return "PPM";
  if (at([0, 0, 1, 0])) return "ICO";
  if (at("8BPS")) return "PSD";
  if (at("%!PS") || at([0xc5, 0xd0, 0xd3, 0xc6])) return "EPS";
  if (b.length >= 2 && b[0] === 10 && [0, 2, 3, 5].includes(b[1])) return "PCX";
  if (at("ftyp", 4) && ["avif", "avis"].includes(ascii(b, 8, 4))) return "AVIF";
  if (at([0, 0, 0, 0x0c, 0x6a, 0x50, 0x20, 0x20]) || at([0xff, 0x4f, 0xff, 0x51])) return "JPEG2000";
  if (at("qoif")) return "QOI";
  if (at("icns")) return "ICNS";
  if (at("DDS ")) return "DDS";
  const tga = b.length >= 18 && b[1] <= 1 && u16le(b, 12) > 0 && u16le(b, 14) > 0;
  if (tga && [1, 8, 16, 24, 32].includes(b[16]) && [1, 2, 3, 9, 10, 11].includes(b[2])) return "TGA";
  return null;
}

/** Image._decompression_bomb_check, as Image.open runs it. */
function checkBomb(width, height) {
  if (Math.max(1, width) * Math.max(1, height) > PILLOW_BOMB_PIXELS) {
    throw fail("image has too many pixels (decompression bomb?)");
  }
}

/** Everything the checks need from the header; readImageHeader() is its public face. */
function inspect(bytes) {
  const at = (sig, i = 0) => startsWith(bytes, typeof sig === "string" ? bytesOf(sig) : sig, i);
  let info = null;
  if (at([0xff, 0xd8, 0xff])) info = parseJpeg(bytes);
  else if (at(PNG_SIGNATURE)) info = parsePng(bytes);
  else if (at("GIF87a") || at("GIF89a")) info = parseGif(bytes);
  else if (at("RIFF") && at("WEBP", 8)) info = parseWebp(bytes);
  else if (at("BM")) info = parseBmp(bytes);
  else if (at("II*\0") || at("MM\0*") || at("II+\0") || at("MM\0+")) info = parseTiff(bytes);
  if (!info) {
    const other = disallowedFormat(bytes);
    if (other) throw fail(`format ${other} is not allowed (use JPEG, PNG, WebP, GIF, BMP or TIFF)`);
    throw notAnImage();
  }
  checkBomb(info.width, info.height);
  return info;
}

/**
 * The format and size a photo's header declares, without decoding it.
 * @param {Uint8Array} bytes
 * @returns {{format: "JPEG"|"PNG"|"WEBP"|"GIF"|"BMP"|"TIFF", width: number, height: number}}
 * @throws {ImageError} not an image, a format skulens refuses, or an unreadable header
 */
export function readImageHeader(bytes) {
  const { format, width, height } = inspect(bytes);
  return { format, width, height };
}

// --- the checks before decoding (the order of load_image) ----------------------------------------

/** The limits given, the server's defaults for any left out. */
function limitsOf(limits) {
  const given = Object.entries(limits || {}).filter(([, value]) => value !== null && value !== undefined);
  return { ...DEFAULT_LIMITS, ...Object.fromEntries(given) };
}

async function readBytes(source, limits) {
  const size = source instanceof Blob ? source.size : source.byteLength;
  if (size === 0) throw fail("file is empty");
  // checked before reading, so a huge file is never loaded into memory
  if (size > limits.max_bytes) throw fail(`file is over the limit of ${thousands(limits.max_bytes)} bytes`);
  if (source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  return source instanceof Uint8Array ? source : new Uint8Array(source);
}

/** PNG: iCCP / zTXt / iTXt chunks that inflate past MAX_TEXT_CHUNK are refused when Pillow opens. */
async function checkPngTextBombs(info) {
  for (const data of info.compressed || []) {
    if ((await inflate(data, PNG_MAX_TEXT_CHUNK)).size > PNG_MAX_TEXT_CHUNK) {
      throw headerError("Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK");
    }
  }
}

function checkSize(info, limits) {
  const { width, height } = info;
  if (width < 1 || height < 1) throw fail("image has no pixels");
  if (width * height > limits.max_pixels) {
    throw fail(`image is ${width}x${height} pixels, over the limit of ${thousands(limits.max_pixels)}`);
  }
  const ratio = limits.max_aspect_ratio;
  if (Math.max(width, height) > ratio * Math.max(1, Math.min(width, height))) {
    throw fail(`image is ${width}x${height} pixels, more than ${ratio} times longer than it is wide (not a photo)`);
  }
}

/** JPEG: Pillow refuses a file whose scans stop before the End Of Image marker (even its last
 * byte): browsers show the decoded part over grey. Walk the entropy-coded data and segments. */
function jpegIsComplete(b, pos) {
  const n = b.length;
  while (pos + 1 < n) {
    if (b[pos] !== 0xff) {
      pos++;
      continue;
    }
    const m = b[pos + 1];
    if (m === 0xd9) return true;
    if (m === 0x00 || m === 0xff || (m >= 0xd0 && m <= 0xd7) || m === 0x01) {
      pos += m === 0xff ? 1 : 2; // stuffed byte, fill byte or restart marker: still scan data
    } else {
      if (pos + 4 > n) return false;
      pos += 2 + u16be(b, pos + 2); // a segment between scans (DHT, SOS, DQT, DRI, APPn, COM)
    }
  }
  return false;
}

/** PNG: the bytes the filtered scanlines of the first image take once inflated (Adam7 included). */
function pngRawSize({ width, height, depth, colourType, interlace }) {
  const bits = PNG_CHANNELS[colourType] * depth;
  let size = 0;
  for (const [x0, y0, dx, dy] of interlace ? ADAM7 : NOT_INTERLACED) {
    const [w, h] = [Math.ceil((width - x0) / dx), Math.ceil((height - y0) / dy)];
    if (w > 0 && h > 0) size += h * (1 + Math.ceil((w * bits) / 8)); // a filter byte, then the row
  }
  return size;
}

/** PNG: the data of the run of IDAT chunks that holds the image (the last one may be cut short). */
function pngImageData(bytes, info) {
  const parts = [];
  let pos = info.idat;
  while (pos + 8 <= bytes.length && ascii(bytes, pos + 4, 4) === "IDAT") {
    const length = u32be(bytes, pos);
    parts.push(bytes.subarray(pos + 8, Math.min(bytes.length, pos + 8 + length)));
    pos += 12 + length;
  }
  return { parts, pos };
}

/** PNG: Pillow decodes until every row is out, so a file cut after its image data (IEND or the
 * zlib checksum missing) still loads, and one cut inside it does not: then inflate what is there. */
async function pngIsComplete(bytes, info) {
  if (info.noImageData) throw corrupt("cannot load this image"); // IEND before any IDAT
  const n = bytes.length;
  let { parts, pos } = pngImageData(bytes, info);
  let complete = pos <= n;
  let after = null;
  // after the image data Pillow reads the chunks up to IEND: a chunk cut inside its data is an error
  for (let seenEnd = false; !seenEnd; ) {
    if (pos + 8 > n || !isChunkId(bytes, pos + 4)) {
      complete = false;
      break;
    }
    const length = u32be(bytes, pos);
    seenEnd = ascii(bytes, pos + 4, 4) === "IEND";
    if (!seenEnd && pos + 8 + length > n) {
      after = corrupt("Truncated File Read");
      break;
    }
    pos += 12 + length;
  }
  if (!complete) {
    // the image data may all be there (only IEND or the zlib checksum missing): Pillow loads it
    const needed = pngRawSize(info.ihdr);
    const raw = await inflate(concat(parts), needed, true);
    if (raw.size < needed) throw pngTruncation(bytes, pos);
    // browsers refuse what Pillow took: the browser gets the data re-wrapped, with an IEND
    const idat = await deflate(raw.bytes.subarray(0, needed));
    info.repair = { keep: info.idat, append: concat([pngChunk("IDAT", idat), pngChunk("IEND", new Uint8Array(0))]) };
  }
  if (after) throw after;
}

/** What Pillow's PNG reader says where the image data stops short: past the last IDAT it reads
 * the next chunk's header, and a header cut inside its 4-letter type is a "broken PNG file". */
function pngTruncation(bytes, pos) {
  const left = bytes.length - pos;
  if (left >= 4 && (left < 8 || !isChunkId(bytes, pos + 4))) {
    return corrupt(`broken PNG file (chunk ${pyBytes(bytes.subarray(pos + 4, pos + 8))})`);
  }
  return truncated();
}

function pngChunk(id, data) {
  const out = new Uint8Array(12 + data.length);
  const head = new DataView(out.buffer);
  head.setUint32(0, data.length);
  out.set(bytesOf(id), 4);
  out.set(data, 8);
  head.setUint32(8 + data.length, crc32([out.subarray(4, 8 + data.length)]));
  return out;
}

/**
 * A PNG the browser could not decode, told in Pillow's words: a scanline whose filter type is not
 * 0..4 is "unrecognized data stream contents", anything else (zlib's errors) a "broken data stream".
 */
async function pngDecodeError(bytes, info) {
  const needed = pngRawSize(info.ihdr);
  const raw = (await inflate(concat(pngImageData(bytes, info).parts), needed, true, 64)).bytes;
  const { width: w, height: h, interlace } = info.ihdr;
  const bits = PNG_CHANNELS[info.ihdr.colourType] * info.ihdr.depth;
  let at = 0;
  for (const [x0, y0, dx, dy] of interlace ? ADAM7 : NOT_INTERLACED) {
    const [pw, ph] = [Math.ceil((w - x0) / dx), Math.ceil((h - y0) / dy)];
    if (pw <= 0 || ph <= 0) continue;
    for (let y = 0; y < ph && at < raw.length; y++, at += 1 + Math.ceil((pw * bits) / 8)) {
      if (raw[at] > 4) return corrupt("unrecognized data stream contents when reading image file");
    }
  }
  return undecodable();
}

/** Python's repr() of a bytes object. */
function pyBytes(b) {
  const quote = b.includes(0x27) && !b.includes(0x22) ? '"' : "'";
  const text = Array.from(b, (c) => {
    if (c === 0x5c) return "\\\\";
    if (c === quote.charCodeAt(0)) return `\\${quote}`;
    const named = { 9: "\\t", 10: "\\n", 13: "\\r" }[c];
    if (named) return named;
    return c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, "0")}`;
  });
  return `b${quote}${text.join("")}${quote}`;
}

async function deflate(data) {
  const stream = new Blob([data]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * GIF: Pillow decodes the first frame until its pixels are all out and its data ends (the LZW end
 * code or the 0-length block), so the frame's data must hold them all; the block and the trailer
 * may be missing, and then the browser gets them added. Counts the pixels the LZW codes give.
 */
function gifIsComplete(bytes, info) {
  const { frameData, frame } = info;
  const codeSize = bytes[frameData - 1];
  const data = [];
  let pos = frameData;
  while (pos < bytes.length && bytes[pos] !== 0) {
    data.push(bytes.subarray(pos + 1, Math.min(bytes.length, pos + 1 + bytes[pos])));
    pos += 1 + bytes[pos];
  }
  const ended = pos < bytes.length; // a 0-length block ends the frame's data
  const { pixels, endCode, corrupt } = gifPixels(concat(data), codeSize);
  if (corrupt) throw undecodable();
  if (pixels < frame.width * frame.height || !(endCode || ended)) return false;
  if (!ended) info.repair = { keep: bytes.length, append: new Uint8Array([0x00, 0x3b]) };
  return true;
}

/** How many pixels the LZW codes in `data` expand to, and whether they reach the end code (or a
 * code no encoder writes: corrupt, Pillow's "broken data stream"). */
function gifPixels(data, codeSize) {
  if (codeSize < 1 || codeSize > 11) return { pixels: 0, endCode: false, corrupt: true };
  const clear = 1 << codeSize;
  const lengths = new Uint32Array(4096); // how many pixels each code stands for
  let next = clear + 2;
  let width = codeSize + 1;
  let previous = -1;
  let pixels = 0;
  let bits = 0;
  let buffer = 0;
  for (let i = 0; i < data.length; i++) {
    buffer |= data[i] << bits;
    bits += 8;
    while (bits >= width) {
      const code = buffer & ((1 << width) - 1);
      buffer >>>= width;
      bits -= width;
      if (code === clear) {
        [next, width, previous] = [clear + 2, codeSize + 1, -1];
        continue;
      }
      if (code === clear + 1) return { pixels, endCode: true, corrupt: false };
      const before = previous < clear ? 1 : lengths[previous]; // the previous code's pixels
      let length;
      if (code < clear) length = 1;
      else if (code < next && previous >= 0) length = lengths[code];
      else if (code === next && previous >= 0) length = before + 1;
      else return { pixels, endCode: false, corrupt: true };
      if (previous >= 0 && next < 4096) {
        lengths[next++] = before + 1;
        if (next === 1 << width && width < 12) width++;
      }
      pixels += length;
      previous = code;
    }
  }
  return { pixels, endCode: false, corrupt: false };
}

async function checkComplete(bytes, info) {
  if (info.format === "JPEG" && info.scanStart === null) throw corrupt("cannot load this image"); // no scan
  if (info.format === "JPEG" && !jpegIsComplete(bytes, info.scanStart)) throw truncated();
  if (info.format === "PNG") await pngIsComplete(bytes, info);
  if (info.format === "GIF" && !gifIsComplete(bytes, info)) throw truncated();
  const bmpEnd = info.pixelsAt + info.rowBytes * info.height;
  if (info.format === "BMP" && info.raw && bytes.length < bmpEnd) throw truncated();
}

// --- decoding --------------------------------------------------------------------------------------

/**
 * The bytes the browser decodes: the photo as stored, never turned (its EXIF orientations set to 1,
 * and orient() turns it the way Pillow does: browsers differ from Pillow and from each other;
 * Chromium ignores a WebP's EXIF and any XMP orientation, and applies a JPEG's or PNG's even when
 * asked not to), less what Pillow ignores and a browser would not.
 */
function stillBytes(bytes, info) {
  let out = bytes;
  if (info.repair) out = concat([bytes.subarray(0, info.repair.keep), info.repair.append]);
  const kept = info.repair?.keep ?? bytes.length; // patches in a cut-off tail went with it
  const patches = (info.patches || []).filter(({ at, chunk }) => (chunk ? chunk.start + 12 + chunk.length : at + 4) <= kept);
  if (patches.length) {
    out = out === bytes ? bytes.slice() : out;
    for (const { at, bytes: one, chunk } of patches) {
      out.set(one, at);
      if (chunk) {
        const crc = crc32([out.subarray(chunk.start + 4, chunk.start + 8 + chunk.length)]);
        out.set([crc >>> 24, (crc >>> 16) & 0xff, (crc >>> 8) & 0xff, crc & 0xff], chunk.start + 8 + chunk.length);
      }
    }
  }
  if (info.format === "PNG" && info.ignoredTrns.length) {
    // Pillow keeps a grey or RGB PNG's single transparent colour (tRNS) as info, never as alpha:
    // the photo stays opaque. The browser would punch that colour out, so the chunk goes.
    const parts = [];
    let from = 0;
    for (const [start, end] of info.ignoredTrns) {
      parts.push(out.subarray(from, start));
      from = end;
    }
    parts.push(out.subarray(from));
    return new Blob(parts);
  }
  if (info.format === "BMP" && info.ignoredAlpha) {
    out = out === bytes ? bytes.slice() : out;
    const end = Math.min(out.length, info.pixelsAt + info.rowBytes * info.height);
    for (let i = info.pixelsAt + 3; i < end; i += 4) out[i] = 255;
  }
  return out;
}

function newCanvas(width, height) {
  if (typeof OffscreenCanvas !== "undefined") return new OffscreenCanvas(width, height);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

/**
 * Decode with the browser: no colour management (Pillow applies no ICC profile either), the first
 * frame of an animation; "from-image" is moot, stillBytes left no orientation to apply. RGBA.
 */
async function decodeRGBA(data) {
  const blob = data instanceof Blob ? data : new Blob([data]);
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image",
      premultiplyAlpha: "none",
      colorSpaceConversion: "none",
    });
  } catch {
    throw undecodable();
  }
  try {
    const { width, height } = bitmap;
    const ctx = newCanvas(width, height).getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    return { width, height, channels: 4, data: ctx.getImageData(0, 0, width, height).data };
  } finally {
    bitmap.close();
  }
}

/** PNG scanline filters undone for `rows` rows of `rowBytes` bytes from raw[at]. */
function unfilter(raw, at, rowBytes, rows, bpp) {
  const out = new Uint8Array(rowBytes * rows);
  for (let y = 0; y < rows; y++, at += rowBytes + 1) {
    const filter = raw[at];
    const row = y * rowBytes;
    for (let i = 0; i < rowBytes; i++) {
      const x = raw[at + 1 + i];
      const a = i >= bpp ? out[row + i - bpp] : 0;
      const b = y ? out[row - rowBytes + i] : 0;
      const c = y && i >= bpp ? out[row - rowBytes + i - bpp] : 0;
      let predictor;
      if (filter === 0) predictor = 0;
      else if (filter === 1) predictor = a;
      else if (filter === 2) predictor = b;
      else if (filter === 3) predictor = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
        predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else {
        throw undecodable();
      }
      out[row + i] = (x + predictor) & 0xff;
    }
  }
  return { rows: out, next: at };
}

/**
 * A 16-bit greyscale PNG, decoded here: Pillow opens it as "I;16" and images.py stretches its own
 * range (lowest value -> 0, highest -> 255) where browsers just drop to 8 bits, so the 16-bit
 * samples are needed. Other 16-bit PNGs come out of Pillow and browsers alike (the high byte).
 */
async function decodeGrey16Png(bytes, info) {
  const { width: w, height: h, interlace } = info.ihdr;
  const needed = pngRawSize(info.ihdr);
  const raw = (await inflate(concat(pngImageData(bytes, info).parts), needed, true)).bytes;
  if (raw.length < needed) throw truncated();
  const values = new Uint16Array(w * h);
  let at = 0;
  for (const [x0, y0, dx, dy] of interlace ? ADAM7 : NOT_INTERLACED) {
    const pw = Math.ceil((w - x0) / dx);
    const ph = Math.ceil((h - y0) / dy);
    if (pw <= 0 || ph <= 0) continue;
    const { rows, next } = unfilter(raw, at, pw * 2, ph, 2);
    at = next;
    for (let y = 0; y < ph; y++) {
      for (let x = 0, i = y * pw * 2; x < pw; x++, i += 2) {
        values[(y0 + y * dy) * w + x0 + x * dx] = (rows[i] << 8) | rows[i + 1]; // big-endian samples
      }
    }
  }
  let lo = 65535;
  let hi = 0;
  for (const v of values) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
  const out = new Uint8Array(w * h * 3);
  const k = 255.0 / (hi - lo); // float64, then truncated to uint8, as NumPy does in images.py
  for (let i = 0; i < values.length; i++) {
    out[i * 3] = out[i * 3 + 1] = out[i * 3 + 2] = hi <= lo ? 0 : Math.trunc((values[i] - lo) * k);
  }
  return orient({ width: w, height: h, channels: 3, data: out }, info.orientation);
}

/**
 * RGBA -> RGB on white, Pillow's Image.alpha_composite (AlphaComposite.c, 7 fractional bits).
 * The canvas stores premultiplied colour, so a translucent pixel reads back as round(p * 255 / a)
 * for its premultiplied p = round(c * a / 255); the composite on white only needs p, which that
 * value gives back exactly, so the result is Pillow's to the last bit.
 */
function compositeOnWhite({ width, height, data }) {
  const out = new Uint8Array(width * height * 3);
  const div255 = (v) => ((v >> 8) + v) >> 8; // SHIFTFORDIV255
  for (let i = 0, o = 0; i < data.length; i += 4, o += 3) {
    const a = data[i + 3];
    if (a === 255) {
      out[o] = data[i];
      out[o + 1] = data[i + 1];
      out[o + 2] = data[i + 2];
    } else if (a === 0) {
      out[o] = out[o + 1] = out[o + 2] = 255;
    } else {
      const outa255 = a * 255 + 255 * (255 - a);
      const coef1 = Math.floor((a * 255 * 255 * 128) / outa255);
      const coef2 = 255 * 128 - coef1;
      for (let c = 0; c < 3; c++) out[o + c] = div255(data[i + c] * coef1 + 255 * coef2 + (0x80 << 7)) >> 7;
    }
  }
  return { width, height, channels: 3, data: out };
}

/** Pillow's RGB -> L (Convert.c: L24, i.e. R*299/1000 + G*587/1000 + B*114/1000 in 16-bit fixed point). */
function toGrey({ width, height, data }) {
  const out = new Uint8Array(width * height);
  for (let i = 0, o = 0; o < out.length; i += 3, o++) {
    out[o] = (data[i] * 19595 + data[i + 1] * 38470 + data[i + 2] * 7471 + 0x8000) >> 16;
  }
  return { width, height, channels: 1, data: out };
}

// --- JPEG draft -------------------------------------------------------------------------------------

/** Pillow's JpegImageFile.draft(): decode at 1/2, 1/4 or 1/8 scale, the largest reduction that keeps
 * both sides >= the model size (load_image asks for it when the photo is at least twice as big). */
function draftScale(info, size) {
  if (info.format !== "JPEG" || info.pillowFormat !== "JPEG") return 1; // MPO: no draft in Python
  const fit = Math.min(Math.floor(info.width / size), Math.floor(info.height / size));
  return [8, 4, 2, 1].find((s) => fit >= s) || 1;
}

const FRAME_RGB = { RGBA: [0, 1, 2], RGBX: [0, 1, 2], BGRA: [2, 1, 0], BGRX: [2, 1, 0] };

/**
 * The draft done by the browser's own libjpeg-turbo: WebCodecs' ImageDecoder decodes a JPEG in the
 * DCT domain when asked for exactly ceil(w / scale) x ceil(h / scale), the size libjpeg's scaled
 * decode gives, and its pixels are then Pillow's draft to the bit (Chromium). The frame comes as
 * stored (stillBytes; copyTo() ignores any display rotation) and is turned here as Pillow turns it.
 * Null where the browser cannot (no ImageDecoder: not Chromium, or not a secure context; a YUV or
 * odd-sized frame): the caller then emulates the draft.
 */
async function decodeJpegDraft(bytes, info, scale) {
  if (typeof ImageDecoder === "undefined") return null;
  const width = Math.ceil(info.width / scale);
  const height = Math.ceil(info.height / scale);
  let decoder = null;
  let frame = null;
  try {
    decoder = new ImageDecoder({
      data: stillBytes(bytes, info),
      type: "image/jpeg",
      desiredWidth: width,
      desiredHeight: height,
      colorSpaceConversion: "none",
    });
    frame = (await decoder.decode({ frameIndex: 0 })).image;
    const order = FRAME_RGB[frame.format];
    const rect = frame.visibleRect;
    if (!order || rect.width !== width || rect.height !== height) return null;
    const buffer = new Uint8Array(frame.allocationSize());
    const [{ offset, stride }] = await frame.copyTo(buffer);
    const out = new Uint8Array(width * height * 3);
    for (let y = 0, o = 0; y < height; y++) {
      for (let x = 0, i = offset + y * stride; x < width; x++, i += 4, o += 3) {
        out[o] = buffer[i + order[0]];
        out[o + 1] = buffer[i + order[1]];
        out[o + 2] = buffer[i + order[2]];
      }
    }
    return orient({ width, height, channels: 3, data: out }, info.orientation);
  } catch {
    return null;
  } finally {
    frame?.close();
    decoder?.close();
  }
}

/** ImageOps.exif_transpose: the transposition each EXIF orientation (2..8) asks for. */
function orient(img, orientation) {
  if (!(orientation >= 2 && orientation <= 8)) return img;
  const { width: w, height: h, channels, data } = img;
  const swap = orientation >= 5;
  const outW = swap ? h : w;
  const outH = swap ? w : h;
  // for an output pixel (x, y): the input pixel it comes from
  const source = {
    2: (x, y) => [w - 1 - x, y], // FLIP_LEFT_RIGHT
    3: (x, y) => [w - 1 - x, h - 1 - y], // ROTATE_180
    4: (x, y) => [x, h - 1 - y], // FLIP_TOP_BOTTOM
    5: (x, y) => [y, x], // TRANSPOSE
    6: (x, y) => [y, h - 1 - x], // ROTATE_270
    7: (x, y) => [w - 1 - y, h - 1 - x], // TRANSVERSE
    8: (x, y) => [w - 1 - y, x], // ROTATE_90
  }[orientation];
  const out = new Uint8Array(data.length);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const [sx, sy] = source(x, y);
      const i = (sy * w + sx) * channels;
      const o = (y * outW + x) * channels;
      for (let c = 0; c < channels; c++) out[o + c] = data[i + c];
    }
  }
  return { width: outW, height: outH, channels, data: out };
}

/**
 * The draft emulated where the browser cannot do it: a box average of `scale` x `scale` blocks
 * (rounded), ceil(w / scale) x ceil(h / scale) out, on the photo as stored (so partial blocks sit on
 * the right and bottom, as libjpeg's do). An approximation: libjpeg scales in the DCT domain (at 1/8
 * a block's DC term, its mean; at 1/2 and 1/4 a reduced IDCT, close to but not a box) and decodes
 * chroma at the reduced scale, where the full-size decode upsampled it first;
 * tests/test_device_preprocess.py measures the difference.
 */
function boxReduce(img, scale) {
  const { width, height, channels, data } = img;
  const outW = Math.ceil(width / scale);
  const outH = Math.ceil(height / scale);
  const out = new Uint8Array(outW * outH * channels);
  const sums = new Float64Array(channels);
  for (let oy = 0; oy < outH; oy++) {
    const [y0, y1] = [oy * scale, Math.min(height, (oy + 1) * scale)];
    for (let ox = 0; ox < outW; ox++) {
      const [x0, x1] = [ox * scale, Math.min(width, (ox + 1) * scale)];
      sums.fill(0);
      for (let y = y0; y < y1; y++) {
        for (let x = x0, i = (y * width + x0) * channels; x < x1; x++) {
          for (let c = 0; c < channels; c++) sums[c] += data[i++];
        }
      }
      const count = (y1 - y0) * (x1 - x0);
      const o = (oy * outW + ox) * channels;
      for (let c = 0; c < channels; c++) out[o + c] = Math.floor(sums[c] / count + 0.5);
    }
  }
  return { width: outW, height: outH, channels, data: out };
}

/**
 * The photo decoded, upright, RGB on white, at the JPEG draft scale when Python drafts it.
 * Returns the image, the upright photo's full size, and how a draft was made ("dct": the browser's
 * libjpeg, as Pillow's; "box": the emulation) or null.
 */
async function decodePhoto(bytes, info, size) {
  const scale = draftScale(info, size);
  const turned = info.orientation >= 5 && info.orientation <= 8;
  const [width, height] = turned ? [info.height, info.width] : [info.width, info.height];
  if (scale > 1) {
    const drafted = await decodeJpegDraft(bytes, info, scale);
    if (drafted) return { img: drafted, width, height, draft: { scale, method: "dct" } };
  }
  if (info.format === "PNG" && info.ihdr.colourType === 0 && info.ihdr.depth === 16) {
    return { img: await decodeGrey16Png(bytes, info), width, height, draft: null };
  }
  const stored = await decodeRGBA(stillBytes(bytes, info)).catch(async (error) => {
    throw info.format === "PNG" ? await pngDecodeError(bytes, info) : error;
  });
  let img = compositeOnWhite(stored);
  if (scale > 1) img = boxReduce(img, scale);
  if (stored.width !== info.width || stored.height !== info.height) {
    // a browser that turned it all the same (from a tag stillBytes does not know): kept as it is
    return { img, width: stored.width, height: stored.height, draft: scale > 1 ? { scale, method: "box" } : null };
  }
  return { img: orient(img, info.orientation), width, height, draft: scale > 1 ? { scale, method: "box" } : null };
}

// --- geometry: pad, resize, crop ------------------------------------------------------------------

/** transforms.border_colour: per channel, int(np.median) of the four one-pixel edges. */
function borderColour({ width: w, height: h, channels, data }) {
  const fill = [];
  for (let c = 0; c < channels; c++) {
    const counts = new Uint32Array(256);
    const add = (x, y) => counts[data[(y * w + x) * channels + c]]++;
    for (let x = 0; x < w; x++) add(x, 0);
    for (let x = 0; x < w; x++) add(x, h - 1);
    for (let y = 0; y < h; y++) add(0, y);
    for (let y = 0; y < h; y++) add(w - 1, y);
    const n = 2 * w + 2 * h; // always even: the median is the mean of the two middle values
    const nth = (k) => {
      let seen = 0;
      for (let v = 0; v < 256; v++) if ((seen += counts[v]) > k) return v;
      return 255;
    };
    fill.push(Math.floor((nth(n / 2 - 1) + nth(n / 2)) / 2));
  }
  return fill;
}

/** transforms.pad_to_square: centred on a square of its border colour. */
function padToSquare(img) {
  const { width: w, height: h, channels, data } = img;
  if (w === h) return img;
  const side = Math.max(w, h);
  const fill = borderColour(img);
  const out = new Uint8Array(side * side * channels);
  for (let i = 0; i < out.length; i += channels) for (let c = 0; c < channels; c++) out[i + c] = fill[c];
  const left = Math.floor((side - w) / 2);
  const top = Math.floor((side - h) / 2);
  for (let y = 0; y < h; y++) {
    out.set(data.subarray(y * w * channels, (y + 1) * w * channels), ((top + y) * side + left) * channels);
  }
  return { width: side, height: side, channels, data: out };
}

// Pillow's resampling (libImaging/Resample.c), ported line for line rather than drawn with canvas
// drawImage: the browser's resampler (Skia's bilinear / mipmaps, GPU-dependent) is a different filter,
// and the model, trained on Pillow's pixels, would move its probabilities. Only BILINEAR is needed.
const PRECISION_BITS = 32 - 8 - 2;

const bilinear = (x) => {
  x = Math.abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
};

/** precompute_coeffs + normalize_coeffs_8bpc: per output pixel, its first input pixel, how many,
 * and fixed-point weights (support widened by the reduction factor: the antialiasing). */
function precomputeCoeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale; // BILINEAR's support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const invFilterscale = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = 0.0 + (xx + 0.5) * scale;
    let ww = 0.0;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    for (let x = 0; x < xmax; x++) {
      const w = bilinear((x + xmin - center + 0.5) * invFilterscale);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? k[x] / ww : k[x];
      const fixed = v * (1 << PRECISION_BITS);
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + fixed) : Math.trunc(0.5 + fixed); // rounded half away
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

/** clip8: round (the 1 << (PRECISION_BITS - 1) each sum starts from) and clip after every pass. */
const clip8 = (ss) => {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
};

/** ImagingResampleHorizontal_8bpc over rows [offset, offset + outH). */
function resampleHorizontal(img, outW, outH, offset, { ksize, bounds, kk }) {
  const { width, channels, data } = img;
  const out = new Uint8Array(outW * outH * channels);
  for (let yy = 0; yy < outH; yy++) {
    const row = (yy + offset) * width * channels;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2];
      const xmax = bounds[xx * 2 + 1];
      for (let c = 0; c < channels; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let x = 0; x < xmax; x++) ss += data[row + (x + xmin) * channels + c] * kk[xx * ksize + x];
        out[(yy * outW + xx) * channels + c] = clip8(ss);
      }
    }
  }
  return { width: outW, height: outH, channels, data: out };
}

/** ImagingResampleVertical_8bpc. */
function resampleVertical(img, outH, { ksize, bounds, kk }) {
  const { width, channels, data } = img;
  const out = new Uint8Array(width * outH * channels);
  const stride = width * channels;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2];
    const ymax = bounds[yy * 2 + 1];
    for (let i = 0; i < stride; i++) {
      let ss = 1 << (PRECISION_BITS - 1);
      for (let y = 0; y < ymax; y++) ss += data[(y + ymin) * stride + i] * kk[yy * ksize + y];
      out[yy * stride + i] = clip8(ss);
    }
  }
  return { width, height: outH, channels, data: out };
}

/** ImagingResampleInner with BILINEAR: horizontal pass first (only over the rows the vertical pass
 * reads), then vertical; a pass runs only when its dimension changes. */
function pillowResize(img, outW, outH) {
  const needHorizontal = outW !== img.width;
  const needVertical = outH !== img.height;
  if (!needHorizontal && !needVertical) return img;
  const vert = precomputeCoeffs(img.height, outH);
  const first = vert.bounds[0];
  const last = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];
  if (needHorizontal) {
    for (let i = 0; i < outH; i++) vert.bounds[i * 2] -= first;
    img = resampleHorizontal(img, outW, last - first, first, precomputeCoeffs(img.width, outW));
  }
  return needVertical ? resampleVertical(img, outH, vert) : img;
}

/** Python's round(): half to even. */
function pyRound(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : r;
}

/** transforms.resize_shorter_side. */
function resizeShorterSide(img, side) {
  const { width: w, height: h } = img;
  const scale = side / Math.min(w, h);
  if (Math.abs(scale - 1.0) < 1e-6) return img;
  return pillowResize(img, Math.max(1, pyRound(w * scale)), Math.max(1, pyRound(h * scale)));
}

/** Image.crop at Python's (w - size) // 2 offsets (outside the image: zeros, as in Pillow). */
function centreCrop(img, size) {
  const { width: w, height: h, channels, data } = img;
  const left = Math.floor((w - size) / 2);
  const top = Math.floor((h - size) / 2);
  const out = new Uint8Array(size * size * channels);
  for (let y = 0; y < size; y++) {
    const sy = top + y;
    if (sy < 0 || sy >= h) continue;
    for (let x = 0; x < size; x++) {
      const sx = left + x;
      if (sx < 0 || sx >= w) continue;
      for (let c = 0; c < channels; c++) out[(y * size + x) * channels + c] = data[(sy * w + sx) * channels + c];
    }
  }
  return { width: size, height: size, channels, data: out };
}

/** HWC uint8 -> CHW float32, in float32 arithmetic as NumPy does: (x / 255 - mean) / std. */
function normalise({ width, height, channels, data }, mean, std) {
  const plane = width * height;
  const out = new Float32Array(channels * plane);
  const f = Math.fround;
  for (let c = 0; c < channels; c++) {
    const m = f(mean[c]);
    const s = f(std[c]);
    for (let i = 0; i < plane; i++) out[c * plane + i] = f(f(f(data[i * channels + c] / 255) - m) / s);
  }
  return out;
}

// --- the one path ---------------------------------------------------------------------------------

/**
 * A photo -> the model input, exactly as image_to_array() does on the server.
 * @param {Blob|ArrayBuffer|Uint8Array} blob the photo as the shopper picked it
 * @param {{img_size: number, mean: number[], std: number[], in_chans?: number, resize?: "crop"|"pad"}} pre
 *   the run's recorded Preprocessing
 * @param {{max_bytes?: number, max_pixels?: number, max_aspect_ratio?: number}} [limits]
 * @returns {Promise<{data: Float32Array, dims: number[], width: number, height: number,
 *   draft: ?{scale: number, method: string}}>}
 *   the CHW input, its dims [1, C, S, S], the size of the upright photo at full resolution, and the
 *   JPEG draft made (null: none; method "dct": exactly Pillow's; "box": the approximation)
 * @throws {ImageError} with the server's message for the same bytes
 */
export async function imageToModelInput(blob, pre, limits) {
  limits = limitsOf(limits);
  const size = pre.img_size;
  const bytes = await readBytes(blob, limits);
  const info = inspect(bytes);
  if (info.format === "PNG") await checkPngTextBombs(info);
  checkSize(info, limits);
  if (info.format === "TIFF") {
    throw fail("TIFF photos cannot be read on this device (send a JPEG, PNG or WebP)", "unsupported_on_device");
  }
  await checkComplete(bytes, info);

  const photo = await decodePhoto(bytes, info, size);
  let img = photo.img;
  if (pre.in_chans === 1) img = toGrey(img);
  if ((pre.resize || "crop") === "pad") img = padToSquare(img);
  img = centreCrop(resizeShorterSide(img, size), size);
  return {
    data: normalise(img, pre.mean, pre.std),
    dims: [1, img.channels, size, size],
    width: photo.width,
    height: photo.height,
    draft: photo.draft,
  };
}
