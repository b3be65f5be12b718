/**
 * Quality hints for a photo of a film, the CLI's checks (clients/sdk/imaging.py, same names and
 * thresholds) on the phone: blur (variance of the Laplacian, Pech-Pacheco et al. 2000, after a
 * 1% contrast stretch), under- and over-exposure, glare (clipped pixels), low resolution. Tilt is
 * not estimated here. Run in the worker, on a grey copy at most 1024 pixels on its long side.
 */
export type QualityIssue = "blur" | "underexposed" | "overexposed" | "glare" | "low_resolution";

export interface QualityWarning {
  issue: QualityIssue;
  message: string;
}

const T = { analysis: 1024, minSharpness: 80, darkMean: 45, darkP95: 90, brightMean: 215, brightP5: 170, glareLevel: 250, maxGlare: 0.02, minShortSide: 800 };

/** Grey levels (ITU-R BT.601 luma) of RGBA pixels, box-downscaled to the analysis size. */
function grey(rgba: Uint8ClampedArray, width: number, height: number): { g: Uint8Array; w: number; h: number } {
  const scale = Math.min(1, T.analysis / Math.max(width, height));
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

function percentile(hist: number[], total: number, q: number): number {
  let seen = 0;
  for (let v = 0; v < 256; v++) {
    seen += hist[v]!;
    if (seen >= q * total) return v;
  }
  return 255;
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
  return found;
}
