// herd: live pages and the log follower. The pages work without this file.
"use strict";

// A live page refetches itself on each change the server announces and
// swaps its <main>; the rest of the page (and the scroll) stays.
function livePage() {
  if (document.body.dataset.live !== "true" || !window.EventSource) return;
  let busy = false, again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await fetch(location.href, { headers: { "X-Herd-Fragment": "1" } });
      if (r.ok) {
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const fresh = doc.getElementById("main");
        const main = document.getElementById("main");
        // Keep open <details> open across refreshes.
        const open = new Set([...main.querySelectorAll("details[open]")].map(d => d.parentElement && d.parentElement.textContent));
        // Inline logs keep following: their rows move into the new page.
        const logs = [...main.querySelectorAll("tr.inline-log")];
        if (fresh && main) {
          main.replaceWith(fresh);
          fresh.querySelectorAll("details").forEach(d => { if (d.parentElement && open.has(d.parentElement.textContent)) d.open = true; });
          for (const row of logs) {
            const b = fresh.querySelector(`button.show-log[data-key="${row.dataset.key}"]`);
            if (b) { b.closest("tr").after(row); b.setAttribute("aria-expanded", "true"); }
          }
        }
      }
    } catch (e) { /* the next event retries */ }
    busy = false;
    if (again) { again = false; refresh(); }
  }
  new EventSource("/events").onmessage = refresh;
}

// ANSI SGR colours to spans, as the server renders them (web/ansi.rs).
function Renderer(pre, firstLine) {
  let line = firstLine, fg = null, bold = false, cur = null, span = null;
  const last = pre.lastElementChild;
  function cls() { const c = []; if (fg !== null) c.push("c" + fg); if (bold) c.push("b"); return c.join(" "); }
  function newSpan() { const c = cls(); span = null; if (c) { span = document.createElement("span"); span.className = c; cur.appendChild(span); } }
  function newLine() {
    cur = document.createElement("span"); cur.className = "ln"; cur.id = "L" + line;
    const a = document.createElement("a"); a.href = "#L" + line; a.dataset.n = line; a.setAttribute("aria-hidden", "true");
    cur.appendChild(a); pre.appendChild(cur); pre.appendChild(document.createTextNode("\n")); newSpan();
  }
  // Continue the last (unfinished) line of the server-rendered page.
  if (last && last.classList.contains("ln") && !(last.nextSibling && last.nextSibling.nodeValue === "\n")) {
    cur = last; line = parseInt(last.id.slice(1), 10); span = null;
  }
  function text(t) { if (!t) return; if (!cur) newLine(); (span || cur).appendChild(document.createTextNode(t)); }
  function sgr(params) {
    for (const p of (params || "0").split(";")) {
      const n = parseInt(p || "0", 10);
      if (n === 0) { fg = null; bold = false; } else if (n === 1) bold = true; else if (n === 22) bold = false;
      else if (n >= 30 && n <= 37) fg = n - 30; else if (n >= 90 && n <= 97) fg = n - 82; else if (n === 39) fg = null;
    }
    if (cur) newSpan();
  }
  let pending = "";
  this.feed = function (s) {
    s = pending + s; pending = "";
    let i = 0, start = 0;
    while (i < s.length) {
      const c = s[i];
      if (c === "\x1b") {
        text(s.slice(start, i));
        const m = /^\x1b\[([0-9;]*)([A-Za-z])/.exec(s.slice(i));
        if (!m) { if (s.length - i < 16) { pending = s.slice(i); return; } i++; start = i; continue; }
        if (m[2] === "m") sgr(m[1]);
        i += m[0].length; start = i; continue;
      }
      if (c === "\n") {
        text(s.slice(start, i));
        if (!cur) newLine();
        line++; cur = null; span = null; i++; start = i; continue;
      }
      if (c === "\r") { text(s.slice(start, i)); i++; start = i; continue; }
      i++;
    }
    text(s.slice(start));
  };
}

// The log view follows a running step: it asks for what comes after what
// it has, waiting on the server, and scrolls along when at the bottom.
async function followLog(pre) {
  const attempt = pre.dataset.attempt, step = pre.dataset.step;
  let offset = parseInt(pre.dataset.end, 10);
  const r = new Renderer(pre, parseInt(pre.dataset.line, 10) + pre.querySelectorAll(".ln").length);
  const decoder = new TextDecoder();
  const note = document.getElementById("following");
  for (let i = 0; i < 100000; i++) {
    let res;
    try {
      res = await fetch(`/api/v1/attempts/${attempt}/steps/${step}/log?offset=${offset}&wait_ms=20000&limit=1048576`);
    } catch (e) { await new Promise(ok => setTimeout(ok, 2000)); continue; }
    if (!res.ok) break;
    const buf = await res.arrayBuffer();
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    if (buf.byteLength > 0) {
      offset += buf.byteLength;
      r.feed(decoder.decode(buf, { stream: true }));
      if (atBottom) window.scrollTo(0, document.body.scrollHeight);
    }
    if (res.headers.get("x-herd-more") === "0" && offset >= parseInt(res.headers.get("x-herd-log-size") || "0", 10)) {
      if (note) note.textContent = "The step ended (" + res.headers.get("x-herd-step-state") + ").";
      break;
    }
  }
}

// A grid cell opens its build at its builder's jobs.
function gridClicks() {
  document.addEventListener("click", (ev) => {
    const td = ev.target.closest && ev.target.closest("table.grid td");
    if (!td || ev.target.closest("a")) return;
    const tr = td.parentElement, table = td.closest("table");
    const th = table.querySelectorAll("thead th")[td.cellIndex];
    const name = th && th.querySelector(".bname");
    const build = td.dataset.b || tr.dataset.b;
    if (build && name) location.href = "/builds/" + build + "#b-" + encodeURIComponent(name.textContent);
  });
}

// Hovering a grid cell names the worker that ran each of its jobs and how
// long it took (from the build's API answer, fetched once per build).
function gridHovers() {
  const builds = new Map();
  document.addEventListener("mouseover", async (ev) => {
    const td = ev.target.closest && ev.target.closest("table.grid td");
    if (!td || td.dataset.hovered) return;
    const tr = td.parentElement, table = td.closest("table");
    const th = table.querySelectorAll("thead th")[td.cellIndex];
    const name = th && th.querySelector(".bname");
    const build = td.dataset.b || tr.dataset.b;
    if (!build || !name) return;
    td.dataset.hovered = "1";
    try {
      if (!builds.has(build)) builds.set(build, fetch("/api/v1/builds/" + build).then(r => r.json()));
      const b = await builds.get(build);
      // Only an ended build's answer stays true.
      if (b.state === "queued" || b.state === "running") builds.delete(build);
      const lines = [];
      for (const j of b.jobs || []) {
        if (j.builder !== name.textContent) continue;
        const a = (j.attempts || [])[j.attempts.length - 1];
        const took = j.started_at && j.finished_at ? " in " + ((j.finished_at - j.started_at) / 1000).toFixed(1) + " s" : "";
        lines.push(`${j.builder}/${j.name}: ${j.state}${a ? " on " + a.worker : ""}${took}`);
      }
      if (lines.length) td.title = `build #${build}${b.ref_name ? " of " + b.ref_name : ""}\n` + lines.join("\n");
    } catch (e) { delete td.dataset.hovered; }
  });
}

// A step's log inline on the build page, live while the step runs.
function inlineLogs() {
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest && ev.target.closest("button.show-log");
    if (!b) return;
    const row = b.closest("tr"), next = row.nextElementSibling;
    if (next && next.classList.contains("inline-log")) {
      next.remove(); b.setAttribute("aria-expanded", "false"); return;
    }
    const tr = document.createElement("tr");
    tr.className = "inline-log"; tr.dataset.key = b.dataset.key;
    const td = document.createElement("td"); td.colSpan = row.cells.length;
    const pre = document.createElement("pre");
    pre.className = "log"; pre.dataset.attempt = b.dataset.attempt; pre.dataset.step = b.dataset.step;
    pre.dataset.end = "0"; pre.dataset.line = "1";
    td.appendChild(pre); tr.appendChild(td); row.after(tr);
    b.setAttribute("aria-expanded", "true");
    followLog(pre);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  livePage();
  gridClicks();
  gridHovers();
  inlineLogs();
  const log = document.getElementById("log");
  if (log && log.dataset.follow === "true") followLog(log);
});
