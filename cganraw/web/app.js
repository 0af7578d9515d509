// The page of `python -m cganraw.serve`: POST the form to /api/v1/render, show the PNG.
"use strict";

const MAX_SEED = 4294967295;
const $ = (id) => document.getElementById(id);
let imageUrl = null;

function showError(message) {
  $("error").textContent = message;
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

function quote(ch) {
  if (ch === "\t") return "a tab";
  if (ch === "\r") return "a carriage return";
  return `“${ch}”`;
}

async function explain(res) {
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  const detail = data && data.detail;
  if (res.status === 422 && Array.isArray(detail)) {
    const chars = detail.flatMap((d) => d.characters || []);
    if (chars.length) {
      return `No model can write ${chars.map(quote).join(", ")}. ` +
             `Available: ${$("charset").textContent}, space.`;
    }
    return detail.map((d) => (d.loc ? `${d.loc[d.loc.length - 1]}: ` : "") + d.msg).join("; ");
  }
  if (res.status === 503) return "The server is busy: try again in a moment.";
  if (res.status === 413) return "The request is too large.";
  return typeof detail === "string" ? detail : `The server answered ${res.status}.`;
}

async function write() {
  const text = $("text").value;
  const body = { text, style: $("style").value, layout: $("layout").value,
                 scale: Number($("scale").value), ink: $("ink").value };
  const seed = $("seed").value.trim();
  if (seed !== "") {
    if (!/^[0-9]+$/.test(seed) || Number(seed) > MAX_SEED) {
      showError(`The seed must be a whole number from 0 to ${MAX_SEED}.`);
      $("seed").focus();
      return;
    }
    body.seed = Number(seed);
  }
  $("go").disabled = true;
  $("status").textContent = "Writing…";
  try {
    const res = await fetch("/api/v1/render", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (!res.ok) {
      showError(await explain(res));
      $("status").textContent = "";
      return;
    }
    const blob = await res.blob();
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = URL.createObjectURL(blob);
    const used = res.headers.get("X-Seed");
    $("seed").value = used;
    const img = $("result");
    img.alt = `“${text}” in generated handwriting`;
    img.src = imageUrl;
    $("download").href = imageUrl;
    $("download").download = `handwriting-${used}.png`;
    $("figure").hidden = false;
    showError("");
    $("status").textContent = `Seed ${used}.`;
  } catch (e) {
    showError(`The server cannot be reached (${e.message}).`);
    $("status").textContent = "";
  } finally {
    $("go").disabled = false;
  }
}

async function loadCharset() {
  try {
    const res = await fetch("/api/v1/models");
    const data = await res.json();
    $("charset").textContent = data.characters;
  } catch (e) {
    $("charset").textContent = "unknown (the server cannot be reached)";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("write").addEventListener("submit", (event) => {
    event.preventDefault();
    write();
  });
  $("new-hand").addEventListener("click", () => {
    $("seed").value = String(randomSeed());
    write();
  });
  loadCharset();
});
