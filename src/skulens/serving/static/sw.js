// The page's service worker (served at /sw.js, so its scope is the whole site): after the first visit the
// page, the runtime and the model come from this cache, and with the network cut the page still opens and
// recognises photos on the device. Search needs the server and says so.
"use strict";

const CACHE = "skulens-page-v1";
// The page itself: fetched from the network first (an update is seen at once), the cache when offline.
const SHELL = ["/", "/static/app.js", "/static/device.js", "/static/preprocess.js", "/static/style.css"];
const FRESH_FIRST = new Set([...SHELL, "/v1/info", "/v1/device/manifest"]);
// Named by version or checksum, so a cached copy is never stale: the cache first, the network once.
const IMMUTABLE = [/^\/static\/vendor\//, /^\/v1\/device\/model\/[0-9a-f]{64}\.onnx$/];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

async function cacheFirst(request) {
  const cache = await caches.open(CACHE);
  const hit = await cache.match(request);
  if (hit) return hit;
  const response = await fetch(request);
  if (response.ok) await cache.put(request, response.clone());
  return response;
}

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  try {
    const response = await fetch(request);
    if (response.ok) await cache.put(request, response.clone());
    return response;
  } catch (error) {
    const hit = await cache.match(request, { ignoreSearch: true });
    if (hit) return hit;
    throw error;
  }
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  // API keys travel in headers: answers fetched with one are never cached for whoever comes next.
  if (request.headers.has("X-API-Key") || request.headers.has("Authorization")) return;
  if (IMMUTABLE.some((pattern) => pattern.test(url.pathname))) {
    event.respondWith(cacheFirst(request));
  } else if (FRESH_FIRST.has(url.pathname)) {
    event.respondWith(networkFirst(request));
  }
});
