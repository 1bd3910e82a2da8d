// The feather-serve page: pick or drop an image, ask, stream the answer, draw the kept tokens.
// Plain browser JavaScript: no build step, nothing fetched from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
let imageUrl = null;  // the picked image as a data URI: what the API takes

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function showModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    $("model").textContent = r.ok ? body.data[0].id : "(" + body.error.message + ")";
  } catch (err) {
    $("model").textContent = "(server unreachable)";
  }
}

function pick(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) return fail("not an image: " + file.name);
  const reader = new FileReader();
  reader.onload = () => {
    imageUrl = reader.result.replace(/^data:[^;,]*/, "data:" + (file.type || "image/png"));
    $("preview").src = imageUrl;
    $("preview").hidden = false;
    $("drop-hint").hidden = true;
    $("ask").disabled = false;
  };
  reader.readAsDataURL(file);
}

function fail(message) {
  $("answer").textContent = message;
  $("answer").className = "error";
  $("status").textContent = "error";
}

async function ask() {
  $("ask").disabled = true;
  $("answer").textContent = "";
  $("answer").className = "";
  $("stages").replaceChildren();
  $("info").replaceChildren();
  $("status").textContent = "waiting…";
  const body = {
    messages: [{ role: "user", content: [
      { type: "text", text: $("question").value },
      { type: "image_url", image_url: { url: imageUrl } }] }],
    max_tokens: Number($("max-tokens").value) || 64,
    stream: true,
    stream_options: { include_usage: true },
  };
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!r.ok) {
      const err = await r.json().catch(() => ({ error: { message: r.statusText } }));
      return fail(r.status + ": " + err.error.message);
    }
    await readEvents(r.body.getReader());
  } catch (err) {
    fail(String(err));
  } finally {
    $("ask").disabled = false;
  }
}

async function readEvents(reader) {
  const decoder = new TextDecoder();
  let buffer = "", finish = null, usage = null, feather = null;
  $("status").textContent = "streaming…";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (line === "[DONE]") continue;
      const event = JSON.parse(line);
      if (event.error) return fail(event.error.message);
      if (event.usage) usage = event.usage;
      const choice = event.choices && event.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) $("answer").textContent += choice.delta.content;
      if (choice.finish_reason) { finish = choice.finish_reason; feather = event.feather; }
    }
  }
  if (!finish) return fail("the stream ended without an answer");
  $("status").textContent = "done (" + finish + ")";
  drawStages(feather);
  showInfo(feather, usage);
}

function drawStages(feather) {
  const n = feather.n_image;
  const stages = [{ layer: "input", kept: null }].concat(feather.stages);
  for (const stage of stages) {
    const kept = stage.kept === null ? null : new Set(stage.kept);
    const figure = document.createElement("figure");
    const view = document.createElement("div");
    view.className = "view" + (feather.center_crop ? "" : " whole");
    view.style.backgroundImage = "url(" + imageUrl + ")";
    const caption = document.createElement("figcaption");
    caption.textContent = stage.kept === null ? "all " + n + " image tokens"
      : "layer " + stage.layer + ": kept " + stage.kept.length + " of " + n;
    if (feather.grid && kept) view.appendChild(grid(feather.grid, kept));
    figure.append(view, caption);
    figure.className = "stage";
    figure.dataset.kept = stage.kept === null ? n : stage.kept.length;
    $("stages").appendChild(figure);
  }
}

function grid(side, kept) {
  // token i covers row i // side, column i % side of the model's view
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = side * 8;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "rgba(20, 20, 30, 0.72)";
  for (let i = 0; i < side * side; i++) {
    if (!kept.has(i)) ctx.fillRect((i % side) * 8, Math.floor(i / side) * 8, 8, 8);
  }
  canvas.dataset.kept = kept.size;
  return canvas;
}

function showInfo(feather, usage) {
  const op = feather.operating_point || {};
  const t = feather.timings || {};
  const sec = (v) => (typeof v === "number" ? (v * 1000).toFixed(0) + " ms" : "–");
  const rows = [
    ["operating point", op.criterion + ", K = " + (op.K || []).join(" ") + ", R = " + op.ratio],
    ["stages", (op.stages || []).map((s) => "layer " + s.layer + " keeps " + s.keep).join("; ")],
    ["vision", sec(t.vision_s)],
    ["prefill", sec(t.llm_prefill_s)],
    ["time to first token", sec(t.ttft_s)],
    ["decode", t.decode_tokens_per_s ? t.decode_tokens_per_s.toFixed(1) + " tokens/s" : "–"],
  ];
  if (usage) rows.push(["tokens", usage.prompt_tokens + " prompt + " + usage.completion_tokens + " answer"]);
  for (const [name, value] of rows) {
    const tr = $("info").insertRow();
    tr.insertCell().textContent = name;
    tr.insertCell().textContent = value;
  }
}

$("file").addEventListener("change", (e) => pick(e.target.files[0]));
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  pick(e.dataTransfer.files[0]);
});
$("ask").addEventListener("click", ask);
$("api-key").addEventListener("change", showModel);
showModel();
