/**
 * The redirect URI of the phone's single sign-on (sso.ts): the IdP sends the sign-in window
 * here with `code` and `state` (or `error`). They go, unread, to the app's page over a
 * same-origin BroadcastChannel (the worker there checks `state` and holds the PKCE verifier,
 * without which the code is worthless); the address bar is cleared of them, and the window
 * closes itself where the browser lets it.
 */
const params = new URLSearchParams(location.search);
const answer: Record<string, string> = {};
for (const key of ["code", "state", "error"]) {
  const value = params.get(key);
  if (value !== null) answer[key] = value;
}
history.replaceState(null, "", location.pathname);
const channel = new BroadcastChannel("lightbox-sso");
channel.postMessage(answer);
channel.close();
const shown = document.getElementById("status");
if (shown) shown.textContent = answer["code"] ? "Signed in. Return to Lightbox: this window can be closed." : "The sign-in did not complete. Return to Lightbox and try again.";
window.close();
export {};
