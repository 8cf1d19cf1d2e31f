// The server, as the UI uses it: JSON requests that throw an Error carrying the HTTP status and the server's
// reason, and the raw arrays of /api/item. Authentication is the cookie the server set when the page was
// opened with the token in the URL.

export async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { detail: text }; }
  if (!response.ok) {
    const error = new Error((body && body.detail) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

export function query(params) {
  return Object.entries(params).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
}

// base64 -> bytes: the server sends pixels, labels and uncertainty as raw uint8 arrays, never as PNGs the
// browser could colour-manage
export function decode(b64) {
  if (!b64) return null;
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export async function loadItem(id) {
  const it = await api(`/api/item?${query({ image: id })}`);
  it.pixels = decode(it.image);
  it.proposal = decode(it.proposal);
  it.uncertainty = decode(it.uncertainty);
  it.final = decode(it.final);
  return it;
}
