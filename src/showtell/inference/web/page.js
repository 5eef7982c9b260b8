// The page: load the model, read the pictures the user gives, show their captions.
import { END, Model, PAD, START, UNK, caption, prepare, toRGB } from "./showtell.js";

const $ = (id) => document.getElementById(id);
let model = null;
let queue = Promise.resolve();   // pictures are captioned one after another, in the order given

async function load() {
  const info = await (await fetch("model.json")).json();
  const s = info.special;   // vocab.py's ids, which showtell.js's search masks and stops on
  if (s.pad !== PAD || s.start !== START || s.end !== END || s.unk !== UNK) throw new Error("model.json's special word ids differ from showtell.js's");
  const rt = info.runtime;
  // imported here, not at the top, so that a copy refused by its integrity hash is a message on the page
  const ort = await import("onnxruntime-web");
  // a plain static server is not cross-origin isolated, so wasm threads are off; the .wasm file is
  // fetched here, with its integrity hash, rather than by onnxruntime-web
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmBinary = await (await fetch(rt.wasm, { integrity: rt.integrity[rt.wasm] })).arrayBuffer();
  model = await Model.load(ort, "./", info);
  const beam = String(info.decode.beam_size);
  if (![...$("beam").options].some((o) => o.value === beam)) $("beam").add(new Option(beam));
  $("beam").value = beam;
  $("status").textContent = `ready: ${info.decoder} decoder, ${info.vocabulary.length} words`;
  document.body.dataset.ready = "1";
}

async function pixels(file) {
  // the file's pixels as the browser decodes them (no colour conversion), or null if it cannot
  try {
    const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none",
      imageOrientation: "from-image" });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    return toRGB(context.getImageData(0, 0, bitmap.width, bitmap.height).data, bitmap.width, bitmap.height);
  } catch {
    return null;
  }
}

function item(file) {
  const li = document.createElement("li");
  li.dataset.name = file.name;
  const img = document.createElement("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.onerror = () => img.remove();
  const text = document.createElement("div");
  text.innerHTML = '<p class="caption"></p><div class="meta"></div><ol class="alternatives"></ol>';
  li.append(img, text);
  $("results").append(li);
  return li;
}

async function captionFile(file, beamSize) {
  const li = item(file);
  const picture = await pixels(file);
  if (!picture) {
    li.querySelector(".caption").textContent = "";
    li.querySelector(".meta").innerHTML = `<span class="problem">${file.name}: not a picture this browser can read</span>`;
    li.dataset.error = "1";
    $("error").textContent = `${file.name}: not a picture this browser can read`;
    return;
  }
  const d = model.info.decode;
  const started = performance.now();
  const found = await caption(model, prepare(picture, model.info.transform), { beamSize, nBest: beamSize,
    maxLength: d.max_length, lengthPenalty: d.length_penalty, blockUnk: d.block_unk });
  li.dataset.hypotheses = JSON.stringify(found);
  li.querySelector(".caption").textContent = found.length ? found[0].caption : "(no caption)";
  li.querySelector(".meta").textContent = `${picture.width}×${picture.height}, beam ${beamSize}, ` +
    `${Math.round(performance.now() - started)} ms`;
  const list = li.querySelector(".alternatives");
  for (const h of found.slice(1)) {
    const alt = document.createElement("li");
    alt.textContent = h.caption;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = ` log p = ${h.logprob.toFixed(3)}${h.finished ? "" : " (cut at the length limit)"}`;
    alt.append(score);
    list.append(alt);
  }
}

function take(files) {
  if (!model) {
    $("error").textContent = "the model is still loading (or could not be loaded): try again in a moment";
    return;
  }
  $("error").textContent = "";
  const beamSize = Number($("beam").value);
  for (const file of files) {
    queue = queue.then(() => captionFile(file, beamSize)).catch((e) => { $("error").textContent = String(e); });
  }
  queue = queue.then(() => { document.body.dataset.done = String($("results").children.length); });
}

$("drop").addEventListener("click", () => $("file").click());
$("drop").addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
$("file").addEventListener("change", () => { take([...$("file").files]); $("file").value = ""; });
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  take([...e.dataTransfer.files]);
});
load().catch((e) => {
  $("status").textContent = "the model could not be loaded";
  $("error").textContent = `the model could not be loaded: ${e.message || e}`;
});
