/**
 * The photo that leaves the phone holds pixels and nothing else. A canvas re-encode already
 * drops EXIF and location (the camera's file is never read), but browsers add an ICC profile
 * (APP2); this keeps only the segments of a baseline or progressive JPEG's pixels, as
 * clients/sdk/imaging.py requires of the CLI's output: SOI, APP0/JFIF, DQT, SOF0-2, DHT, SOS
 * with its entropy-coded data, EOI (ITU-T T.81 Annex B). Anything else is refused.
 */
const KEEP = new Set([0xe0, 0xdb, 0xc0, 0xc1, 0xc2, 0xc4, 0xdd]);
const DROP = (m: number): boolean => (m >= 0xe1 && m <= 0xef) || m === 0xfe; // APP1-15, COM

export class NotAJpeg extends Error {}

export function pixelsOnlyJpeg(data: Uint8Array): Uint8Array {
  if (data[0] !== 0xff || data[1] !== 0xd8) throw new NotAJpeg("not a JPEG");
  const out: Uint8Array[] = [data.subarray(0, 2)];
  let i = 2;
  while (i < data.length) {
    if (data[i] !== 0xff) throw new NotAJpeg("expected a marker");
    while (data[i] === 0xff) i++;
    const marker = data[i++]!;
    if (marker === 0xd9) {
      out.push(new Uint8Array([0xff, 0xd9]));
      return concatAll(out);
    }
    const length = (data[i]! << 8) | data[i + 1]!;
    if (length < 2 || i + length > data.length) throw new NotAJpeg("bad segment length");
    const segment = data.subarray(i - 2, i + length);
    i += length;
    if (marker === 0xda) {
      // Entropy-coded data runs to the next marker that is not a stuffed 0x00 or a restart.
      let j = i;
      while (j < data.length - 1 && !(data[j] === 0xff && data[j + 1] !== 0 && !(data[j + 1]! >= 0xd0 && data[j + 1]! <= 0xd7))) j++;
      out.push(segment, data.subarray(i, j));
      i = j;
      continue;
    }
    if (DROP(marker)) continue;
    if (!KEEP.has(marker)) throw new NotAJpeg(`unexpected segment 0xFF${marker.toString(16).toUpperCase()}`);
    if (marker === 0xe0 && !(segment[4] === 0x4a && segment[5] === 0x46 && segment[6] === 0x49 && segment[7] === 0x46 && segment[8] === 0)) continue;
    out.push(segment);
  }
  throw new NotAJpeg("no end of image");
}

function concatAll(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
