// On-device recognition (issue 19): the page runs the server's own INT8 model in the browser with
// onnxruntime-web (served by skulens, never a CDN), so the photo never leaves the device. The answer has
// the shape of POST /v1/recognize's, so the page renders both the same way; search sends only the
// embedding (POST /v1/search/vector). Everything the model needs (preprocessing, limits, classes, tree)
// comes from GET /v1/device/manifest: nothing here repeats the run's settings.
import { imageToModelInput } from "./preprocess.js";

function softmax(logits) {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / total);
}

// Each node's confidence is the probability mass of every class under it, as the server's
// level_confidences (serving/predictions.py) computes it.
function levelConfidences(path, probs, paths) {
  return path.map((name, depth) => {
    let mass = 0;
    probs.forEach((p, i) => {
      if (paths[i].length > depth && paths[i].slice(0, depth + 1).every((n, d) => n === path[d])) mass += p;
    });
    return { name, confidence: Math.min(1, mass) };
  });
}

function mirrored(data, dims) {
  // The photo's mirror image (width axis of CHW), for catalogs whose vectors average both views.
  const [, channels, height, width] = dims;
  const out = new Float32Array(data.length);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < height; y++) {
      const row = (c * height + y) * width;
      for (let x = 0; x < width; x++) out[row + x] = data[row + width - 1 - x];
    }
  }
  return out;
}

export function deviceSupported() {
  return typeof WebAssembly === "object" && typeof createImageBitmap === "function" && typeof OffscreenCanvas === "function";
}

export class DeviceEngine {
  constructor(ort, session, manifest, backend) {
    this.ort = ort;
    this.session = session;
    this.manifest = manifest;
    this.backend = backend;
    this.logitsName = manifest.model.outputs[0];
    this.hasEmbedding = manifest.model.outputs.includes("embedding");
  }

  // The runtime (a 70 KB module and a 3.6 MB compressed binary) and the model: fetched once, then
  // kept by the browser cache and the page's service worker (their URLs change only when they do).
  static async load(manifest, headers = {}) {
    const ort = await import(manifest.runtime);
    const threads = self.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
    ort.env.wasm.numThreads = threads;
    // The bundle carries its loader: only the binary's URL is needed (a prefix would fetch the loader too).
    ort.env.wasm.wasmPaths = { wasm: new URL("ort-wasm-simd-threaded.wasm", new URL(manifest.runtime, location.href)).href };
    const response = await fetch(manifest.model.url, { headers });
    if (!response.ok) throw new Error(`the model could not be loaded (HTTP ${response.status})`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
    return new DeviceEngine(ort, session, manifest, `wasm, ${threads} thread${threads > 1 ? "s" : ""}`);
  }

  async run(data, dims, names) {
    const feeds = { [this.manifest.model.input]: new this.ort.Tensor("float32", data, dims) };
    return this.session.run(feeds, names);
  }

  // {answer (RecognizeResponse's shape, products empty), vector (the embedding output, or null)}.
  // Bad photos throw ImageError with the server's own messages (preprocess.js).
  async recognize(blob) {
    const started = performance.now();
    const m = this.manifest;
    const input = await imageToModelInput(blob, m.preprocessing, m.limits);
    const names = this.hasEmbedding ? [this.logitsName, "embedding"] : [this.logitsName];
    const outputs = await this.run(input.data, input.dims, names);
    const probs = softmax(outputs[this.logitsName].data);
    const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    const topK = order.slice(0, Math.max(1, m.top_k)).map(([p, i]) => ({ label: m.classes[i], confidence: p, path: m.paths[i] }));
    const best = topK[0];
    let vector = null;
    if (this.hasEmbedding && m.search) vector = await this.searchVector(outputs.embedding.data, input);
    const answer = {
      label: best.label,
      confidence: best.confidence,
      path: levelConfidences(best.path, probs, m.paths),
      answer_path: null,
      unknown: false,
      top_k: topK,
      attributes: [],
      products: [],
      engine: `on this device (${m.model.name}, INT8, ${this.backend})`,
      elapsed_ms: performance.now() - started,
    };
    return { answer, vector };
  }

  async searchVector(embedding, input) {
    if (!this.manifest.search.flip) return Array.from(embedding);
    const other = await this.run(mirrored(input.data, input.dims), input.dims, ["embedding"]);
    return Array.from(embedding, (v, i) => v + other.embedding.data[i]);  // the server renormalises the sum
  }
}
