// showtell in the browser: the picture's geometry and greedy / beam search over the exported ONNX graphs.
//
// A port of data/images.py (ImageTransform.to_array: Pillow's resize, torchvision's centre crop) and of
// decoding/search.py (greedy, beam_search), one picture at a time, so the browser writes the captions
// PyTorch writes. Normalisation (mean, std) is inside encoder.onnx, as it is for every runtime.
// Log-probabilities are summed in float32 (Math.fround), as the array code sums them, so that the
// ranking of hypotheses is the same to the last bit. Nothing here touches the page (page.js does).

export const PAD = 0, START = 1, END = 2, UNK = 3;

// --- pictures: Pillow's resampling (libImaging/Resample.c), bit for bit ---------------------------
const PRECISION_BITS = 22;   // Pillow's fixed point for 8-bit pictures: 32 - 8 - 2

function sinc(x) {
  if (x === 0) return 1;
  x *= Math.PI;
  return Math.sin(x) / x;
}

const FILTERS = {   // name: [filter, support], as Pillow defines them
  box: [(x) => (x > -0.5 && x <= 0.5 ? 1 : 0), 0.5],
  bilinear: [(x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; }, 1],
  hamming: [(x) => {
    x = Math.abs(x);
    if (x === 0) return 1;
    if (x >= 1) return 0;
    x *= Math.PI;
    return (Math.sin(x) / x) * (0.54 + 0.46 * Math.cos(x));
  }, 1],
  bicubic: [(x) => {
    const a = -0.5;
    x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  }, 2],
  lanczos: [(x) => (x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0), 3],
};
export const INTERPOLATIONS = Object.keys(FILTERS);

export function roundHalfEven(x) {
  // Python's round(): torchvision's centre crop rounds (H - side) / 2 this way (2.5 -> 2)
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function precomputeCoeffs(inSize, in0, in1, outSize, filter) {
  // Pillow passes the box as C floats; the weights are normalised, then rounded to fixed point
  const [fn, baseSupport] = FILTERS[filter];
  in0 = Math.fround(in0);
  const scale = Math.fround(Math.fround(in1) - in0) / outSize;
  const filterscale = Math.max(scale, 1);   // downscaling widens the filter: the antialiasing
  const support = baseSupport * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Float64Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = fn((x + xmin - center + 0.5) * ss);
      kk[xx * ksize + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? kk[xx * ksize + x] / ww : kk[xx * ksize + x];
      kk[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { ksize, kk, bounds };
}

function clip8(v) {
  if (v >= 256 * (1 << PRECISION_BITS)) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / (1 << PRECISION_BITS));
}

function resize(img, outW, outH, filter, box = [0, 0, img.width, img.height]) {
  // Image.resize(size, filter, box) of an RGB picture ({width, height, data: RGB bytes})
  if (outW === img.width && outH === img.height && box.join() === [0, 0, img.width, img.height].join()) return img;
  const half = 1 << (PRECISION_BITS - 1);
  const horiz = precomputeCoeffs(img.width, box[0], box[2], outW, filter);
  const vert = precomputeCoeffs(img.height, box[1], box[3], outH, filter);
  const needH = outW !== img.width || box[0] !== 0 || box[2] !== outW;
  const needV = outH !== img.height || box[1] !== 0 || box[3] !== outH;
  if (needH && needV && outW > img.width && outH < img.height) {
    // this Pillow (13.0) shrinks the height first when the width grows: the same two passes, swapped
    const rows = resize(img, img.width, outH, filter, [0, box[1], img.width, box[3]]);
    return resize(rows, outW, outH, filter, [box[0], 0, box[2], outH]);
  }
  let src = img;
  if (needH) {   // only the rows the vertical pass reads
    const first = vert.bounds[0], last = vert.bounds[2 * outH - 2] + vert.bounds[2 * outH - 1];
    for (let i = 0; i < outH; i++) vert.bounds[2 * i] -= first;
    const rows = last - first, out = new Uint8Array(outW * rows * 3);
    for (let y = 0; y < rows; y++) {
      for (let xx = 0; xx < outW; xx++) {
        const xmin = horiz.bounds[2 * xx], n = horiz.bounds[2 * xx + 1], k = xx * horiz.ksize;
        for (let c = 0; c < 3; c++) {
          let s = half;
          for (let x = 0; x < n; x++) s += img.data[((y + first) * img.width + x + xmin) * 3 + c] * horiz.kk[k + x];
          out[(y * outW + xx) * 3 + c] = clip8(s);
        }
      }
    }
    src = { width: outW, height: rows, data: out };
  }
  if (!needV) return src;
  const out = new Uint8Array(src.width * outH * 3);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = vert.bounds[2 * yy], n = vert.bounds[2 * yy + 1], k = yy * vert.ksize;
    for (let x = 0; x < src.width * 3; x++) {
      let s = half;
      for (let y = 0; y < n; y++) s += src.data[(y + ymin) * src.width * 3 + x] * vert.kk[k + y];
      out[yy * src.width * 3 + x] = clip8(s);
    }
  }
  return { width: src.width, height: outH, data: out };
}

function crop(img, left, top, side) {
  const out = new Uint8Array(side * side * 3);
  for (let y = 0; y < side; y++) {
    out.set(img.data.subarray(((y + top) * img.width + left) * 3, ((y + top) * img.width + left + side) * 3), y * side * 3);
  }
  return { width: side, height: side, data: out };
}

function centerCrop(img, side) {
  // torchvision's center_crop: black padding first where the picture is smaller
  if (side > img.width || side > img.height) {
    const w = Math.max(img.width, side), h = Math.max(img.height, side);
    const left = Math.max(0, Math.floor((side - img.width) / 2)), top = Math.max(0, Math.floor((side - img.height) / 2));
    const padded = new Uint8Array(w * h * 3);
    for (let y = 0; y < img.height; y++) {
      padded.set(img.data.subarray(y * img.width * 3, (y + 1) * img.width * 3), ((y + top) * w + left) * 3);
    }
    img = { width: w, height: h, data: padded };
  }
  return crop(img, roundHalfEven((img.width - side) / 2), roundHalfEven((img.height - side) / 2), side);
}

export function prepare(img, t) {
  // ImageTransform.to_array: an RGB picture -> uint8 (3, crop, crop), channels first
  const { width, height } = img;
  let out;
  if (t.mode === "squash") {
    out = resize(img, t.crop, t.crop, t.interpolation);
  } else {
    const short = Math.min(width, height), long = Math.max(width, height);
    const newLong = Math.floor((t.resize * long) / short);
    const [w, h] = width <= height ? [t.resize, newLong] : [newLong, t.resize];
    if (newLong > t.long_side_limit * t.resize && t.resize >= t.crop) {   // data/images.py's _long_shortcut
      const top = roundHalfEven((h - t.crop) / 2), left = roundHalfEven((w - t.crop) / 2);
      const sx = width / w, sy = height / h;
      out = resize(img, t.crop, t.crop, t.interpolation,
        [left * sx, top * sy, (left + t.crop) * sx, (top + t.crop) * sy]);
    } else {
      out = centerCrop(resize(img, w, h, t.interpolation), t.crop);
    }
  }
  const s = t.crop * t.crop, chw = new Uint8Array(3 * s);
  for (let i = 0; i < s; i++) for (let c = 0; c < 3; c++) chw[c * s + i] = out.data[i * 3 + c];
  return chw;
}

export function toRGB(rgba, width, height) {
  // canvas pixels (RGBA) -> RGB; transparency over white, as data/images.py composes it
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    const a = rgba[4 * i + 3];
    for (let c = 0; c < 3; c++) data[3 * i + c] = a === 255 ? rgba[4 * i + c] : Math.round((rgba[4 * i + c] * a + 255 * (255 - a)) / 255);
  }
  return { width, height, data };
}

// --- the graphs: encoder, init_state, step (export.py's names) --------------------------------------
export class Model {
  constructor(ort, sessions, info) {
    this.ort = ort;
    this.encoder = sessions.encoder;
    this.init = sessions.init;
    this.stepper = sessions.step;
    this.info = info;
  }

  static async load(ort, base, info, options = {}) {
    const open = (name) => ort.InferenceSession.create(`${base}${name}`, { executionProviders: ["wasm"], ...options });
    const [encoder, init, step] = await Promise.all(["encoder.onnx", "init_state.onnx", "step.onnx"].map(open));
    return new Model(ort, { encoder, init, step }, info);
  }

  async encode(chw) {
    const side = this.info.transform.crop;
    const out = await this.encoder.run({ images: new this.ort.Tensor("uint8", chw, [1, 3, side, side]) });
    return { global: out.global, grid: out.grid };
  }

  async initState(features) {
    const feed = {};
    for (const name of this.init.inputNames) feed[name] = features[name];
    const out = await this.init.run(feed);
    return Object.fromEntries(this.info.state.map((n) => [n, out[`state.${n}`]]));
  }

  async step(words, state) {
    // words: word ids, one per row -> [logprobs (rows x V) as Float32Array, next state]
    const feed = { words: new this.ort.Tensor("int64", BigInt64Array.from(words, BigInt), [words.length]) };
    for (const n of this.info.state) feed[`state.${n}`] = state[n];
    const out = await this.stepper.run(feed);
    return [out.logprobs.data, Object.fromEntries(this.info.state.map((n) => [n, out[`next.${n}`]]))];
  }

  selectRows(state, rows) {
    // arrays.select_state: the state's rows in the order `rows` (beam bookkeeping)
    const picked = {};
    for (const [name, t] of Object.entries(state)) {
      const width = t.data.length / t.dims[0], data = new t.data.constructor(rows.length * width);
      rows.forEach((r, i) => data.set(t.data.subarray(r * width, (r + 1) * width), i * width));
      picked[name] = new this.ort.Tensor(t.type, data, [rows.length, ...t.dims.slice(1)]);
    }
    return picked;
  }
}

// --- decoding: search.py, one picture -------------------------------------------------------------
export function maskRow(size, blockUnk) {
  // -inf for the words decoding never chooses; the reported log-probabilities stay the model's
  const row = new Float32Array(size);
  for (const word of blockUnk ? [PAD, START, UNK] : [PAD, START]) row[word] = -Infinity;
  return row;
}

function topk(values, k) {
  // the k largest, largest first; equal values lowest index first (arrays.topk on NumPy)
  const order = Array.from(values.keys()).sort((a, b) => (values[b] - values[a]) || (a - b));
  return order.slice(0, k);
}

function normalise(logprob, length, alpha) {
  return alpha === 0 ? logprob : Math.fround(logprob / Math.fround(length ** alpha));
}

export async function greedy(model, features, opts) {
  // Feed the most probable word back in until <end> or max_length words
  let state = await model.initState(features);
  let words = [START], total = 0, finished = false, mask = null;
  const seq = [];
  for (let t = 0; t <= opts.maxLength; t++) {
    const [logprobs, next] = await model.step(words, state);
    state = next;
    mask = mask || maskRow(logprobs.length, opts.blockUnk);
    let best = 0, bestLp = -Infinity;
    for (let v = 0; v < logprobs.length; v++) {
      const lp = logprobs[v] + mask[v];
      if (lp > bestLp) { best = v; bestLp = lp; }
    }
    if (!Number.isFinite(bestLp)) break;
    if (best === END || t === opts.maxLength) {   // after max_length words only <end> may follow
      if (best === END) { total = Math.fround(total + bestLp); finished = true; }
      break;
    }
    total = Math.fround(total + bestLp);
    seq.push(best);
    words = [best];
  }
  return [{ words: seq, logprob: total, score: total, finished }];
}

export async function beamSearch(model, features, opts) {
  // search.py's beam_search for one picture: K live hypotheses, the n_best finished ones
  const k = opts.beamSize, nBest = Math.min(opts.nBest || k, k), alpha = opts.lengthPenalty;
  let state = model.selectRows(await model.initState(features), new Array(k).fill(0));
  let aliveLp = Array.from({ length: k }, (_, i) => (i === 0 ? 0 : -Infinity));
  let aliveSeq = Array.from({ length: k }, () => []);
  let fin = Array.from({ length: nBest }, () => ({ words: [], logprob: -Infinity, score: -Infinity }));
  let words = new Array(k).fill(START), mask = null;
  for (let t = 0; t <= opts.maxLength; t++) {
    const [logprobs, next] = await model.step(words, state);
    const v = logprobs.length / k, w = Math.min(k, v);
    mask = mask || maskRow(v, opts.blockUnk);
    const topLp = [], topWord = [];   // each live hypothesis's w best next words, (k * w)
    for (let b = 0; b < k; b++) {
      const row = new Float32Array(v);
      for (let j = 0; j < v; j++) row[j] = Math.fround(aliveLp[b] + (logprobs[b * v + j] + mask[j]));
      for (const j of topk(row, w)) { topLp.push(row[j]); topWord.push(j); }
    }
    const valid = topLp.map(Number.isFinite), isEnd = topWord.map((x, i) => x === END && valid[i]);
    // the finished pool keeps the n_best best of (the old pool + those ending now); length counts <end>
    const candidates = [...fin, ...topLp.map((lp, i) => ({
      words: aliveSeq[Math.floor(i / w)], logprob: isEnd[i] ? lp : -Infinity,
      score: isEnd[i] ? normalise(lp, t + 1, alpha) : -Infinity }))];
    fin = topk(candidates.map((c) => c.score), nBest).map((i) => candidates[i]);
    if (t === opts.maxLength) break;
    const goOn = topLp.map((lp, i) => (isEnd[i] || !valid[i] ? -Infinity : lp));
    const pick = topk(goOn, k), beams = pick.map((i) => Math.floor(i / w));
    aliveLp = pick.map((i) => goOn[i]);
    aliveSeq = pick.map((i, j) => [...aliveSeq[beams[j]], topWord[i]]);
    words = pick.map((i) => topWord[i]);
    state = model.selectRows(next, beams);
    // a live hypothesis's log-probability only falls: stop when none can beat the n_best-th finished one
    const bestAlive = Math.max(...aliveLp);
    const bound = alpha === 0 ? bestAlive : Math.fround(bestAlive / Math.fround((opts.maxLength + 1) ** alpha));
    if (fin[nBest - 1].score >= bound) break;
  }
  return withUnfinished(fin, aliveLp, aliveSeq, nBest, alpha);
}

function withUnfinished(fin, aliveLp, aliveSeq, nBest, alpha) {
  // places no finished hypothesis took go to the best live ones, ranked after every finished one
  const steps = aliveSeq[0].length;
  const aliveScore = aliveLp.map((lp) => normalise(lp, steps, alpha));
  const order = topk(aliveScore, nBest);
  const done = fin.filter((h) => Number.isFinite(h.score)).length;
  const out = [];
  for (let slot = 0; slot < nBest; slot++) {
    const h = slot < done ? { ...fin[slot], finished: true }
      : (() => { const i = order[Math.min(slot - done, order.length - 1)];
        return { words: aliveSeq[i], logprob: aliveLp[i], score: aliveScore[i], finished: false }; })();
    if (Number.isFinite(h.score)) out.push(h);
  }
  return out;
}

export function sentence(words, vocabulary) {
  // Vocabulary.decode: stop at <end>, drop <pad> and <start>
  const out = [];
  for (const i of words) {
    if (i === END) break;
    if (i !== PAD && i !== START) out.push(vocabulary[i]);
  }
  return out.join(" ");
}

export async function caption(model, chw, opts) {
  // one prepared picture -> its hypotheses, best first: [{caption, logprob, score, finished}]
  const features = await model.encode(chw);
  const found = opts.beamSize === 1 ? await greedy(model, features, opts) : await beamSearch(model, features, opts);
  return found.map((h) => ({ caption: sentence(h.words, model.info.vocabulary), logprob: h.logprob, score: h.score,
    finished: h.finished }));
}
