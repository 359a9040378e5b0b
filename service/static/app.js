// birdsearch web page: pick, drop or record a recording; draw its spectrogram; POST /query; show
// the species ranking with photos, the photo grid and the per-window timeline. No framework, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const SPECTROGRAM_FFT = 1024; // samples per spectrogram column (21 ms at 48 kHz)
const SPECTROGRAM_MAX_HZ = 12000; // most bird song lies below this
const RECORD_RATE_HINT = 48000; // what the model hears; the browser may record at another rate

// ---- small DOM helpers (text only: nothing from the server is parsed as HTML) ----

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function speciesColour(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360}, 55%, 38%)`;
}

// ---- spectrogram: a radix-2 FFT over Hann-windowed frames, one frame per canvas column ----

function fftMagnitudes(frame) {
  const n = frame.length;
  const re = Float64Array.from(frame);
  const im = new Float64Array(n);
  for (let i = 1, j = 0; i < n; i++) { // bit-reversal permutation
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) { [re[i], re[j]] = [re[j], re[i]]; }
  }
  for (let size = 2; size <= n; size <<= 1) {
    const step = (-2 * Math.PI) / size;
    for (let start = 0; start < n; start += size) {
      for (let k = 0; k < size / 2; k++) {
        const wr = Math.cos(step * k), wi = Math.sin(step * k);
        const a = start + k, b = a + size / 2;
        const tr = wr * re[b] - wi * im[b], ti = wr * im[b] + wi * re[b];
        re[b] = re[a] - tr; im[b] = im[a] - ti;
        re[a] += tr; im[a] += ti;
      }
    }
  }
  const out = new Float32Array(n / 2);
  for (let k = 0; k < n / 2; k++) out[k] = Math.hypot(re[k], im[k]);
  return out;
}

function colourMap(t) { // dark blue -> green -> yellow, t in 0..1
  const r = Math.round(255 * Math.min(1, Math.max(0, 1.8 * t - 0.6)));
  const g = Math.round(255 * Math.min(1, Math.max(0, 1.3 * t)));
  const b = Math.round(255 * Math.max(0, 0.55 - 0.7 * Math.abs(t - 0.3)));
  return [r, g, b];
}

function drawSpectrogram(buffer) {
  const canvas = $("spectrogram");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const data = buffer.getChannelData(c);
    for (let i = 0; i < data.length; i++) mono[i] += data[i] / buffer.numberOfChannels;
  }
  const hann = new Float32Array(SPECTROGRAM_FFT).map((_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / SPECTROGRAM_FFT));
  const bins = Math.min(SPECTROGRAM_FFT / 2, Math.floor((SPECTROGRAM_MAX_HZ / buffer.sampleRate) * SPECTROGRAM_FFT));
  const columns = [];
  let peak = -Infinity;
  for (let x = 0; x < width; x++) {
    const start = Math.floor((x / width) * Math.max(0, mono.length - SPECTROGRAM_FFT));
    const frame = new Float32Array(SPECTROGRAM_FFT);
    for (let i = 0; i < SPECTROGRAM_FFT && start + i < mono.length; i++) frame[i] = mono[start + i] * hann[i];
    const db = Array.from(fftMagnitudes(frame).subarray(0, bins), (m) => 20 * Math.log10(m + 1e-9));
    for (const v of db) peak = Math.max(peak, v);
    columns.push(db);
  }
  const image = ctx.createImageData(width, height);
  const floor = peak - 80; // 80 dB of range below the loudest bin
  for (let x = 0; x < width; x++) {
    for (let y = 0; y < height; y++) {
      const bin = Math.floor(((height - 1 - y) / height) * bins);
      const [r, g, b] = colourMap(Math.max(0, (columns[x][bin] - floor) / 80));
      const p = 4 * (y * width + x);
      image.data[p] = r; image.data[p + 1] = g; image.data[p + 2] = b; image.data[p + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
  canvas.dataset.drawn = "true";
}

async function showRecording(file) {
  $("recording").hidden = false;
  $("recording-title").textContent = file.name || "Recording";
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(file);
  const canvas = $("spectrogram");
  canvas.dataset.drawn = "false";
  try {
    const context = new (window.AudioContext || window.webkitAudioContext)();
    const buffer = await context.decodeAudioData(await file.arrayBuffer());
    context.close();
    drawSpectrogram(buffer);
    return buffer.duration;
  } catch (error) { // the browser cannot decode every format the server can; the query still runs
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#222"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#ccc"; ctx.font = "16px sans-serif";
    ctx.fillText("(this browser cannot draw this format; the server still hears it)", 20, 100);
    return null;
  }
}

// ---- the query ----

async function runQuery(file) {
  setStatus(`Listening to ${file.name || "the recording"}…`);
  $("results").hidden = true;
  $("timeline").replaceChildren();
  await showRecording(file);
  const form = new FormData();
  form.append("audio", file, file.name || "recording.wav");
  form.append("k", $("opt-k").value || "12");
  form.append("species_k", $("opt-species-k").value || "5");
  form.append("mode", $("opt-mode").value);
  if ($("opt-hop").value) form.append("hop_s", $("opt-hop").value);
  if ($("opt-min-conf").value) form.append("min_conf", $("opt-min-conf").value);
  form.append("include_abstained", "true"); // the nearest species are shown as such when nothing is detected
  let response;
  try {
    response = await fetch("/query", { method: "POST", body: form });
  } catch (error) {
    setStatus(`The server could not be reached: ${error}`, true);
    return;
  }
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    setStatus(`${response.status}: ${detail}`, true);
    return;
  }
  renderAnswer(body);
  const q = body.query;
  setStatus(`Done in ${Math.round(q.timings_ms.total)} ms.`);
}

function renderAnswer(answer) {
  const q = answer.query;
  $("facts").textContent =
    `${q.duration_s.toFixed(1)} s · ${q.source_sample_rate} Hz, ${q.source_channels} channel(s), ${q.source_format} · ` +
    `${q.windows} window(s) of ${q.window_s} s, hop ${q.hop_s} s · mode ${q.model.mode} · index ${q.index.name}`;
  $("aggregation").textContent =
    `Species score: ${answer.aggregation.window_species_score}, then ${answer.aggregation.recording_species_score}. ` +
    `“Windows” counts the windows where the species ranks first.`;
  const best = Math.max(...answer.species.map((s) => s.score), 1e-6);
  const detected = answer.species.filter((s) => s.detected !== false);
  const nearest = answer.species.filter((s) => s.detected === false);
  const items = detected.map((s) => speciesCard(s, best));
  if (answer.abstained) { // "novel": unlike the recordings the model knows; else nothing above min_conf
    const title = answer.reason === "novel" ? "Not in this gallery" : "No species reached the threshold";
    items.unshift(el("li", { class: "abstained", "data-reason": answer.reason || "" },
      el("div", { class: "name" }, title),
      el("div", { class: "muted" }, answer.message || "")));
  }
  if (nearest.length) {
    items.push(el("li", { class: "nearest-heading muted" },
      answer.abstained ? "Nearest species, not detected:" : "Also near, not detected:"));
    items.push(...nearest.map((s) => speciesCard(s, best, true)));
  }
  $("species-list").replaceChildren(...items);
  $("images").replaceChildren(...answer.images.map(photoCard));
  renderTimeline(answer.timeline, q.duration_s, q.window_s, q.hop_s);
  $("results").hidden = false;
}

function speciesCard(s, best, nearest = false) {
  const width = Math.max(2, Math.round((100 * Math.max(0, s.score)) / best));
  return el("li", { class: nearest ? "species-card nearest" : "species-card", "data-species": s.species },
    el("img", { src: s.thumbnail_url, alt: s.common_name || s.species, loading: "lazy" }),
    el("div", {},
      el("div", { class: "name" }, (s.common_name || s.species) + (nearest ? " (nearest, not detected)" : "")),
      el("div", { class: "sci" }, s.species),
      el("div", { class: "muted" }, `score ${s.score.toFixed(3)}` +
        (s.confidence == null ? "" : ` · confidence ${s.confidence.toFixed(2)}`) +
        ` · first in ${s.windows} window(s) · ${s.family}`),
      el("div", { class: "score-bar" }, el("span", { style: `width:${width}%` }))));
}

function photoCard(hit) {
  const credit = [hit.license, hit.attribution].filter(Boolean).join(" · ");
  return el("figure", { class: "photo", "data-image-id": String(hit.id) },
    el("a", { href: hit.url, target: "_blank", rel: "noopener" },
      el("img", { src: hit.thumbnail_url, alt: hit.common_name || hit.species, loading: "lazy" })),
    el("figcaption", { class: "caption" },
      el("div", {}, `${hit.common_name || hit.species} · ${hit.score.toFixed(3)}`),
      el("div", { class: "credit" }, credit || "no license recorded")));
}

function renderTimeline(timeline, duration, window, hop) {
  const box = $("timeline");
  const lanes = Math.max(1, Math.ceil(window / hop)); // overlapping windows go to separate lanes
  box.style.height = `${lanes * 24 + 4}px`;
  const span = Math.max(duration, window);
  box.replaceChildren(...timeline.map((w) => {
    const top = w.species.find((s) => s.detected !== false);
    const label = top ? `${top.common_name || top.species} ${(top.confidence ?? top.score).toFixed(2)}`
      : w.reason === "novel" ? "not in this gallery" : "—";
    const node = el("div", {
      class: w.abstained ? `window abstained ${w.reason || ""}` : "window",
      "data-start": String(w.start_s),
      title: `${w.start_s}–${w.end_s} s: ` + w.species.map((s) => `${s.common_name || s.species} ${s.score.toFixed(3)}`).join(", "),
      style: `left:${(100 * w.start_s) / span}%;width:${(100 * (w.end_s - w.start_s)) / span}%;` +
        `top:${2 + (w.index % lanes) * 24}px;background:${top ? speciesColour(top.species) : "#888"}`,
    }, label);
    return node;
  }));
}

// ---- input: file picker, drag and drop, microphone ----

function setupDropZone() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (e) => { if (e.target.files[0]) runQuery(e.target.files[0]); });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.remove("dragging"); });
  }
  zone.addEventListener("drop", (e) => { if (e.dataTransfer.files[0]) runQuery(e.dataTransfer.files[0]); });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file-input").click(); });
}

function encodeWav(chunks, sampleRate) { // 16-bit PCM mono: every browser records it, libsndfile reads it
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * length));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * length, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, sampleRate, true); view.setUint32(28, 2 * sampleRate, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, 2 * length, true);
  let offset = 44;
  for (const chunk of chunks) {
    for (const v of chunk) { view.setInt16(offset, Math.max(-1, Math.min(1, v)) * 0x7fff, true); offset += 2; }
  }
  return new Blob([view], { type: "audio/wav" });
}

const recorder = { stream: null, context: null, node: null, chunks: [], started: 0, timer: null };

async function startRecording() {
  try {
    recorder.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  } catch (error) {
    setStatus(`No microphone: ${error.message || error}`, true);
    return;
  }
  recorder.context = new AudioContext({ sampleRate: RECORD_RATE_HINT });
  const source = recorder.context.createMediaStreamSource(recorder.stream);
  // ScriptProcessorNode is deprecated but needs no extra module and works in every browser; the
  // copies it hands over are small (4096 samples), and the server does the heavy lifting anyway.
  recorder.node = recorder.context.createScriptProcessor(4096, 1, 1);
  recorder.chunks = [];
  recorder.node.onaudioprocess = (e) => recorder.chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  source.connect(recorder.node);
  recorder.node.connect(recorder.context.destination);
  recorder.started = performance.now();
  recorder.timer = setInterval(() => {
    $("record-time").textContent = `${((performance.now() - recorder.started) / 1000).toFixed(1)} s`;
  }, 100);
  const button = $("record-button");
  button.textContent = "■ Stop and search";
  button.classList.add("recording");
  setStatus("Recording… press stop when the bird has sung.");
}

async function stopRecording() {
  clearInterval(recorder.timer);
  recorder.node.disconnect();
  recorder.stream.getTracks().forEach((t) => t.stop());
  const rate = recorder.context.sampleRate;
  await recorder.context.close();
  const button = $("record-button");
  button.textContent = "● Record";
  button.classList.remove("recording");
  const blob = encodeWav(recorder.chunks, rate);
  recorder.stream = null;
  await runQuery(new File([blob], `recording-${new Date().toISOString().slice(11, 19)}.wav`, { type: "audio/wav" }));
}

function setupRecorder() {
  const button = $("record-button");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    button.disabled = true;
    button.title = "this browser gives no microphone access here (it needs https or localhost)";
    return;
  }
  button.addEventListener("click", () => (recorder.stream ? stopRecording() : startRecording()));
}

async function showServerInfo() {
  try {
    const version = await (await fetch("/version")).json();
    const index = version.index ? `index ${version.index.name}: ${version.index.count} photos of ${version.index.species} species` : "no index yet";
    $("server-info").textContent = `birdsearch ${version.birdsearch} · ${index} · default mode ${version.default_mode}`;
  } catch (error) {
    $("server-info").textContent = "";
  }
}

// GET /evaluation: 404 when the server has no report; ready: false while it is being written (the
// demo evaluates in the background after it starts serving), so ask again until it is there.
const EVALUATION_POLL_MS = 10000;

async function showEvaluation() {
  let report;
  try {
    const response = await fetch("/evaluation");
    if (response.status === 404) return;
    report = await response.json();
  } catch (error) {
    report = { ready: false };
  }
  $("evaluation").hidden = false;
  if (!report.ready) {
    $("evaluation-status").textContent = "The evaluation is still running; it will appear here when it is done.";
    setTimeout(showEvaluation, EVALUATION_POLL_MS);
    return;
  }
  $("evaluation-status").textContent = "";
  $("evaluation-report").textContent = report.markdown;
}

setupDropZone();
setupRecorder();
showServerInfo();
showEvaluation();
