"""The web page at / and its static files (plain HTML, JS and CSS shipped in the package; no CDN),
its service worker at /sw.js, the vendored onnxruntime-web (gzip-encoded where the browser takes
it), and the OpenAPI docs at /docs with Swagger UI served from a local package, so all work offline."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from skulens.serving import web_runtime
from skulens.serving.api_errors import ApiError

STATIC_DIR = Path(__file__).parent / "static"
DOCS_ASSETS = "/docs-assets"
# The page only talks to this server; product images may come from the catalog's own hosts.
# 'wasm-unsafe-eval' lets the page compile onnxruntime-web's WebAssembly (on-device mode) and nothing else.
# COOP + COEP make the page cross-origin isolated, which the runtime's threads need (SharedArrayBuffer);
# "credentialless" keeps product images from other hosts loading without their opting in.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
    "img-src 'self' data: blob: https:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "credentialless",
}
VENDOR_TYPES = {".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/sw.js")
async def service_worker() -> FileResponse:
    # At the root, so its scope is the whole page; never cached by HTTP, so an update is seen at once.
    return FileResponse(STATIC_DIR / "sw.js", media_type="text/javascript", headers={"Cache-Control": "no-cache"})


@router.get(web_runtime.URL_PREFIX + "/{name}")
async def runtime_file(name: str, request: Request) -> FileResponse:
    """onnxruntime-web's files; the gzip twin (a quarter of the 14 MB binary) when the browser accepts it."""
    path = web_runtime.VENDOR_DIR / name
    if name not in web_runtime.FILES or not path.is_file():
        raise ApiError(404, "not_found", f"{name}: not part of the vendored onnxruntime-web")
    # The runtime starts its threads as workers from its own module: a cross-origin isolated page only
    # runs worker scripts that carry the same embedder policy.
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable",
        "Vary": "Accept-Encoding",
        "Cross-Origin-Embedder-Policy": PAGE_HEADERS["Cross-Origin-Embedder-Policy"],
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    media_type = VENDOR_TYPES.get(path.suffix, "application/octet-stream")
    gz = path.with_name(name + ".gz")
    if "gzip" in request.headers.get("accept-encoding", "") and gz.is_file():
        return FileResponse(gz, media_type=media_type, headers={**headers, "Content-Encoding": "gzip"})
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/docs")
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="skulens API",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
    )


def mount_static(app) -> None:
    import swagger_ui_bundle

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
