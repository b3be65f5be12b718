/**
 * The service worker caches the app shell only (so the app opens without network); it never
 * answers for, or stores, anything else: no relay answer, no configuration, no image.
 */
/// <reference lib="webworker" />
const sw = self as unknown as ServiceWorkerGlobalScope;
const CACHE = "lightbox-shell-v1";
const SHELL = ["./", "index.html", "app.js", "app.css", "worker.js", "manifest.webmanifest", "icon.svg"];

sw.addEventListener("install", (ev) => {
  ev.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => sw.skipWaiting()));
});

sw.addEventListener("activate", (ev) => {
  ev.waitUntil(
    caches.keys().then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n)))).then(() => sw.clients.claim()),
  );
});

sw.addEventListener("fetch", (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== "GET" || url.origin !== sw.location.origin) return;
  const path = url.pathname.replace(/^.*\//, "") || "./";
  if (!SHELL.includes(path) && url.pathname !== "/") return;
  // Network first, so a new build is picked up at once; the cached shell when offline.
  ev.respondWith(fetch(ev.request).catch(async () => (await caches.match(ev.request)) ?? Response.error()));
});
