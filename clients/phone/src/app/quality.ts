/**
 * Quality hints for a photo of a film, the CLI's checks (clients/sdk/imaging.py, same names and
 * thresholds) on the phone: blur (variance of the Laplacian, Pech-Pacheco et al. 2000, after a
 * 1% contrast stretch), under- and over-exposure, glare (clipped pixels), low resolution, and
 * tilt (the dominant orientation of the film's straight edges, on a copy at most 256 pixels on
 * its long side). Run in the worker, on a grey copy at most 1024 pixels on its long side.
 */
export type QualityIssue = "blur" | "underexposed" | "overexposed" | "glare" | "low_resolution" | "tilt";

export interface QualityWarning {
  issue: QualityIssue;
  message: string;
}

const T = { analysis: 1024, tiltSize: 256, maxTiltDegrees: 8, minLineStrength: 0.15, minSharpness: 80, darkMean: 45, darkP95: 90, brightMean: 215, brightP5: 170, glareLevel: 250, maxGlare: 0.02, minShortSide: 800 };

/** Grey levels (ITU-R BT.601 luma) of RGBA pixels, box-downscaled to the analysis size. */
function grey(rgba: Uint8ClampedArray, width: number, height: number, longest = T.analysis): { g: Uint8Array; w: number; h: number } {
  const scale = Math.min(1, longest / Math.max(width, height));
  const w = Math.max(1, Math.round(width * scale));
  const h = Math.max(1, Math.round(height * scale));
  const g = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(height - 1, Math.floor(y / scale));
    for (let x = 0; x < w; x++) {
      const sx = Math.min(width - 1, Math.floor(x / scale));
      const i = (sy * width + sx) * 4;
      g[y * w + x] = Math.round(0.299 * rgba[i]! + 0.587 * rgba[i + 1]! + 0.114 * rgba[i + 2]!);
    }
  }
  return { g, w, h };
}

/** Grey levels box-averaged down to `longest` pixels on the long side (Pillow's BOX resize,
 * as the CLI's tilt copy): nearest sampling would make straight edges jagged and bias the
 * orientation histogram. */
function boxGrey(rgba: Uint8ClampedArray, width: number, height: number, longest: number): { g: Uint8Array; w: number; h: number } {
  const scale = Math.min(1, longest / Math.max(width, height));
  const w = Math.max(1, Math.round(width * scale));
  const h = Math.max(1, Math.round(height * scale));
  const sum = new Float64Array(w * h);
  const cnt = new Float64Array(w * h);
  for (let y = 0; y < height; y++) {
    const ty = Math.min(h - 1, Math.floor((y * h) / height));
    for (let x = 0; x < width; x++) {
      const tx = Math.min(w - 1, Math.floor((x * w) / width));
      const i = (y * width + x) * 4;
      sum[ty * w + tx]! += 0.299 * rgba[i]! + 0.587 * rgba[i + 1]! + 0.114 * rgba[i + 2]!;
      cnt[ty * w + tx]!++;
    }
  }
  const g = new Uint8Array(w * h);
  for (let i = 0; i < g.length; i++) g[i] = Math.round(sum[i]! / Math.max(1, cnt[i]!));
  return { g, w, h };
}

function percentile(hist: number[], total: number, q: number): number {
  let seen = 0;
  for (let v = 0; v < 256; v++) {
    seen += hist[v]!;
    if (seen >= q * total) return v;
  }
  return 255;
}

/**
 * (tilt in degrees, strength) of the dominant straight edges, modulo 90 degrees, as
 * clients/sdk/imaging.py dominant_tilt: a histogram of Sobel gradient orientations weighted by
 * magnitude and folded modulo 90 degrees (the four edges of a film vote for one angle), after a
 * small Gaussian blur; `strength` is the share of edge weight within 2 degrees of the peak.
 */
export function dominantTilt(g: Uint8Array, w: number, h: number): { tilt: number; strength: number } {
  if (w < 8 || h < 8) return { tilt: 0, strength: 0 };
  // Separable Gaussian (1 4 6 4 1)/16, about sigma 1, edges clamped.
  const tmp = new Float32Array(w * h);
  const sm = new Float32Array(w * h);
  const k = [1, 4, 6, 4, 1];
  const at = (v: number, n: number): number => Math.min(n - 1, Math.max(0, v));
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let acc = 0;
      for (let i = -2; i <= 2; i++) acc += k[i + 2]! * g[y * w + at(x + i, w)]!;
      tmp[y * w + x] = acc / 16;
    }
  }
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let acc = 0;
      for (let i = -2; i <= 2; i++) acc += k[i + 2]! * tmp[at(y + i, h) * w + x]!;
      sm[y * w + x] = acc / 16;
    }
  }
  const bins = new Float64Array(90);
  const minMagSq = 40 * 40; // a step of about 10 grey levels; flat and noisy areas do not vote
  const degrees = 180 / Math.PI;
  for (let y = 1; y < h - 1; y++) {
    for (let x = 1; x < w - 1; x++) {
      const p = (dy: number, dx: number): number => sm[(y + dy) * w + x + dx]!;
      const gx = -p(-1, -1) + p(-1, 1) - 2 * p(0, -1) + 2 * p(0, 1) - p(1, -1) + p(1, 1);
      const gy = -p(-1, -1) - 2 * p(-1, 0) - p(-1, 1) + p(1, -1) + 2 * p(1, 0) + p(1, 1);
      const magSq = gx * gx + gy * gy;
      if (magSq < minMagSq) continue;
      const bin = ((Math.floor(Math.atan2(gy, gx) * degrees) % 90) + 90) % 90;
      bins[bin]! += Math.sqrt(magSq);
    }
  }
  let total = 0;
  for (const b of bins) total += b;
  if (total === 0) return { tilt: 0, strength: 0 };
  const win = (i: number): number => {
    let acc = 0;
    for (let d = -2; d <= 2; d++) acc += bins[(i + d + 90) % 90]!;
    return acc;
  };
  let peak = 0;
  for (let i = 1; i < 90; i++) if (win(i) > win(peak)) peak = i;
  let num = 0;
  for (let d = -2; d <= 2; d++) num += d * bins[(peak + d + 90) % 90]!;
  const angle = win(peak) ? peak + num / win(peak) + 0.5 : peak;
  return { tilt: angle < 45 ? angle : angle - 90, strength: win(peak) / total };
}

export function checkQuality(rgba: Uint8ClampedArray, width: number, height: number): QualityWarning[] {
  const found: QualityWarning[] = [];
  const { g, w, h } = grey(rgba, width, height);
  const hist = new Array<number>(256).fill(0);
  let sum = 0;
  for (const v of g) {
    hist[v]!++;
    sum += v;
  }
  const n = g.length;
  const mean = sum / n;
  // Laplacian variance on a contrast-stretched copy (1% clipped at each end).
  const lo = percentile(hist, n, 0.01);
  const hi = Math.max(lo + 1, percentile(hist, n, 0.99));
  const st = (v: number): number => Math.min(255, Math.max(0, ((v - lo) * 255) / (hi - lo)));
  let ls = 0;
  let ls2 = 0;
  let count = 0;
  for (let y = 1; y < h - 1; y++) {
    for (let x = 1; x < w - 1; x++) {
      const c = st(g[y * w + x]!);
      const lap = st(g[(y - 1) * w + x]!) + st(g[(y + 1) * w + x]!) + st(g[y * w + x - 1]!) + st(g[y * w + x + 1]!) - 4 * c;
      ls += lap;
      ls2 += lap * lap;
      count++;
    }
  }
  const sharpness = count ? ls2 / count - (ls / count) ** 2 : 0;
  if (sharpness < T.minSharpness) {
    found.push({ issue: "blur", message: "The photo looks blurred. Hold the phone steady, let it focus on the film, and take it again." });
  }
  const p5 = percentile(hist, n, 0.05);
  const p95 = percentile(hist, n, 0.95);
  const over = mean > T.brightMean || p5 > T.brightP5;
  if (mean < T.darkMean || p95 < T.darkP95) {
    found.push({ issue: "underexposed", message: "The photo is too dark. Put the film on a lit viewing box or add light, and take it again." });
  } else if (over) {
    found.push({ issue: "overexposed", message: "The photo is too bright and washed out. Move away from direct light, and take it again." });
  }
  let clipped = 0;
  for (let v = T.glareLevel; v < 256; v++) clipped += hist[v]!;
  if (!over && clipped / n > T.maxGlare) {
    found.push({ issue: "glare", message: `Part of the photo (${Math.round((100 * clipped) / n)}%) is pure white, probably glare. Tilt the phone slightly, and take it again.` });
  }
  if (Math.min(width, height) < T.minShortSide) {
    found.push({ issue: "low_resolution", message: `The photo is small (${width} x ${height} pixels); fine detail may not be readable. Move closer so the film fills the frame.` });
  }
  const small = boxGrey(rgba, width, height, T.tiltSize);
  const { tilt, strength } = dominantTilt(small.g, small.w, small.h);
  if (strength >= T.minLineStrength && Math.abs(tilt) > T.maxTiltDegrees) {
    found.push({ issue: "tilt", message: `The film looks tilted by about ${Math.abs(tilt).toFixed(0)} degrees. Hold the phone parallel to the film, with the whole film in view.` });
  }
  return found;
}
