// bumps-mpi job controller: live pages. Served by the service; every value from a fit is set as
// text (textContent), never as markup.
"use strict";

function setText(element, text) {
  if (element) element.textContent = text;
}

function progressText(progress) {
  if (!progress) return "";
  return Math.round(progress.percent) + "%  step " + progress.step + "/" + progress.steps;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !(seconds >= 0)) return "-";
  const whole = Math.round(seconds);
  const hours = Math.floor(whole / 3600), minutes = Math.floor((whole % 3600) / 60), secs = whole % 60;
  const two = (n) => String(n).padStart(2, "0");
  if (hours) return hours + " h " + two(minutes) + " min";
  return minutes ? minutes + " min " + two(secs) + " s" : secs + " s";
}

function setState(element, state) {
  if (!element) return;
  element.textContent = state;
  element.className = "state " + state.replace(/[^A-Z_]/g, "");
}

// The convergence plot: best chi-square (log scale) against step, drawn as SVG elements.
function drawConvergence(svg, points) {
  if (!svg) return;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const NS = "http://www.w3.org/2000/svg", W = 320, H = 150, L = 46, B = 20, T = 8, R = 8;
  const add = (name, attributes, text) => {
    const element = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    if (text !== undefined) element.textContent = text;
    svg.appendChild(element);
    return element;
  };
  add("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fafafa", stroke: "#ccc" });
  const kept = points.filter((p) => p[1] > 0);
  if (kept.length === 0) {
    add("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "font-size": 11, fill: "#888" }, "waiting for the first step");
    return;
  }
  const xs = kept.map((p) => p[0]), ys = kept.map((p) => Math.log10(p[1]));
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 0.1) { y0 -= 0.05; y1 += 0.05; }
  const px = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = (y) => T + (y1 - y) / (y1 - y0) * (H - T - B);
  add("polyline", { points: kept.map((p, i) => px(xs[i]) + "," + py(ys[i])).join(" "), fill: "none", stroke: "#1f5fa8", "stroke-width": 1.5 });
  add("circle", { cx: px(xs[xs.length - 1]), cy: py(ys[ys.length - 1]), r: 2.5, fill: "#1f5fa8" });
  add("text", { x: L - 4, y: T + 9, "text-anchor": "end", "font-size": 10 }, Number(10 ** y1).toPrecision(3));
  add("text", { x: L - 4, y: H - B, "text-anchor": "end", "font-size": 10 }, Number(10 ** y0).toPrecision(3));
  add("text", { x: L, y: H - 5, "font-size": 10 }, "step " + x0);
  add("text", { x: W - R, y: H - 5, "text-anchor": "end", "font-size": 10 }, "step " + x1);
}

// One fit's page: follow its events (state, progress, best chi-square, time left); when it has ended
// for good (figures drawn, report written), reload to show its results.
function followFit(box) {
  let points = [];
  try {
    points = JSON.parse(box.dataset.convergence || "[]");
  } catch (error) {
    points = [];
  }
  const svg = document.getElementById("convergence");
  drawConvergence(svg, points);
  if (box.dataset.terminal === "yes" || !window.EventSource) return;
  const source = new EventSource(box.dataset.events);
  source.onmessage = (event) => {
    const fit = JSON.parse(event.data);
    setState(document.getElementById("state"), fit.state);
    setText(document.getElementById("reason"), fit.reason || fit.message || "");
    const progress = fit.progress;
    const bar = document.getElementById("progress");
    if (bar && progress) bar.value = progress.percent;
    setText(document.getElementById("progress-text"), progressText(progress));
    if (progress) setText(document.getElementById("eta"), duration(progress.eta_s));
    if (fit.elapsed_s !== null && fit.elapsed_s !== undefined) setText(document.getElementById("elapsed"), duration(fit.elapsed_s));
    const best = progress && progress.chisq !== null ? progress.chisq : fit.chisq;
    if (best !== null && best !== undefined) setText(document.getElementById("best"), best.toPrecision(5));
    if (progress && progress.chisq !== null && progress.step !== null
        && (points.length === 0 || points[points.length - 1][0] < progress.step)) {
      points.push([progress.step, progress.chisq]);
      drawConvergence(svg, points);
    }
    if (fit.terminal || fit.drawing) {
      const cancel = document.getElementById("cancel-form");
      if (cancel) cancel.hidden = true;
      const drawing = document.getElementById("drawing");
      if (drawing && (fit.drawing || fit.state === "COMPLETED")) drawing.hidden = false;
    }
  };
  source.addEventListener("end", () => {
    source.close();
    window.location.reload();
  });
}

// My fits: refresh the states, the chi-squares and the progress of the running ones.
async function refreshList(table, filtered) {
  try {
    const answer = await fetch(table.dataset.live, { credentials: "same-origin" });
    if (!answer.ok) return;
    const fits = await answer.json();
    for (const fit of fits) {
      const row = table.querySelector('tr[data-fit="' + CSS.escape(fit.id) + '"]');
      if (!row) {
        if (!filtered) window.location.reload(); // a fit submitted elsewhere: show it
        if (!filtered) return;
        continue;
      }
      setState(row.querySelector('[data-field="state"]'), fit.state);
      if (fit.chisq !== null) setText(row.querySelector('[data-field="chisq"]'), fit.chisq.toPrecision(4));
      if (fit.state === "RUNNING") {
        const one = await fetch("/api/v1/fits/" + encodeURIComponent(fit.id), { credentials: "same-origin" });
        if (one.ok) setText(row.querySelector('[data-field="progress"]'), progressText((await one.json()).progress));
      } else {
        setText(row.querySelector('[data-field="progress"]'), "");
      }
    }
  } catch (error) {
    // the service restarting: try again next time
  }
  table.dataset.refreshed = String(Number(table.dataset.refreshed || 0) + 1);
}

// The submit form: each field's placeholder shows the chosen fitter's default; sent in place, so that
// after an error every value and every chosen file is still there.
function helpForm(form) {
  const fitter = document.getElementById("fitter");
  const showDefaults = () => {
    let settings = {};
    try {
      settings = JSON.parse(fitter.selectedOptions[0].dataset.settings || "{}");
    } catch (error) {
      settings = {};
    }
    for (const input of form.querySelectorAll("[data-default-of]")) {
      const name = input.dataset.defaultOf;
      if (name === "seed") continue;
      input.placeholder = name in settings ? "default " + settings[name] : "not used by this fitter";
    }
  };
  if (fitter) fitter.addEventListener("change", showDefaults);
  if (!window.fetch || !window.FormData) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("submit");
    button.disabled = true;
    form.dataset.sending = "yes"; // no estimate starts while the submission is checked
    setText(button, "Checking the model…");
    try {
      const answer = await fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" });
      if (answer.redirected && answer.ok) {
        window.location.assign(answer.url);
        return;
      }
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const shown = page.getElementById("form-error") || page.getElementById("error");
      const here = document.getElementById("form-error");
      if (shown) {
        here.replaceChildren(...Array.from(shown.childNodes).map((n) => document.importNode(n, true)));
      } else { // not a page of ours (an upload refused as it arrived): its JSON detail, as text
        let detail = "";
        try {
          detail = JSON.parse(page.body.textContent).detail;
        } catch (error) {
          detail = "";
        }
        const line = document.createElement("p");
        line.className = "error";
        line.id = "error";
        line.textContent = "The service refused the submission (HTTP " + answer.status + ")" + (detail ? ": " + detail : "");
        here.replaceChildren(line);
      }
      const sent = here.querySelector("#sent");
      if (sent) sent.remove();
      const key = page.querySelector('input[name="idempotency_key"]');
      if (key) form.querySelector('input[name="idempotency_key"]').value = key.value;
      here.scrollIntoView();
    } catch (error) {
      setText(document.getElementById("form-error"), "The service could not be reached: try again.");
    } finally {
      button.disabled = false;
      delete form.dataset.sending;
      setText(button, "Submit");
    }
  });
}

function seconds(value) {
  if (value < 1) return (value * 1e3).toFixed(1) + " ms";
  if (value < 120) return value.toFixed(1) + " s";
  return value < 7200 ? (value / 60).toFixed(1) + " min" : (value / 3600).toFixed(1) + " h";
}

function cell(row, text, tag = "td") {
  const item = document.createElement(tag);
  item.textContent = text;
  row.appendChild(item);
}

// The estimate of the fit the form describes, before it is submitted: the model is checked and timed
// by the service (as a submission's is) whenever the model, its data or the fit's settings change.
function estimateForm(form) {
  const box = document.getElementById("estimate");
  const button = document.getElementById("estimate-button");
  if (!box || !button || !window.fetch || !window.FormData) return;
  button.hidden = false;
  let asked = 0;
  const show = (found) => {
    const estimate = found.estimate;
    const intro = document.createElement("p");
    intro.id = "estimate-summary";
    intro.textContent = "Estimate: " + estimate.evaluations.toLocaleString("en") + " evaluations, " +
      seconds(estimate.seconds_per_evaluation) + " each (timed here), about " + seconds(estimate.startup_s) +
      " to start and draw the figures.";
    const table = document.createElement("table");
    table.id = "estimate-table";
    const head = document.createElement("tr");
    for (const title of ["ranks", "fit's wall time", "core-hours", "efficiency", ""]) cell(head, title, "th");
    table.appendChild(head);
    for (const row of estimate.rows) {
      const line = document.createElement("tr");
      if (row.ranks === estimate.chosen) line.className = "chosen";
      cell(line, row.ranks);
      cell(line, seconds(row.wall_s));
      cell(line, row.core_hours.toPrecision(3));
      cell(line, row.efficiency.toFixed(2));
      cell(line, row.ranks === estimate.chosen ? "← these settings" : "");
      table.appendChild(line);
    }
    const parts = [intro, table];
    if (found.refused) {
      const refused = document.createElement("p");
      refused.className = "error";
      refused.id = "estimate-refused";
      refused.textContent = "The service would refuse this fit: " + found.refused;
      parts.push(refused);
    }
    box.replaceChildren(...parts);
  };
  let busy = false, again = false; // one question at a time per form: a change meanwhile asks once after
  const run = async () => {
    const model = form.querySelector("#model"), archive = form.querySelector("#archive");
    if (!(model && model.files.length) && !(archive && archive.files.length)) {
      setText(box, "Choose a model file to see what the fit will cost.");
      return;
    }
    if (busy || form.dataset.sending) {
      again = !form.dataset.sending;
      return;
    }
    busy = true;
    const mine = ++asked;
    setText(box, "Estimating: checking and timing the model…");
    try {
      const answer = await fetch("/api/v1/estimate", { method: "POST", body: new FormData(form), credentials: "same-origin" });
      const found = await answer.json();
      if (mine === asked && answer.ok) show(found);
      else if (mine === asked) setText(box, "No estimate: " + (found.detail || "HTTP " + answer.status));
    } catch (error) {
      if (mine === asked) setText(box, "No estimate: the service could not be reached.");
    } finally {
      busy = false;
      if (again) {
        again = false;
        run();
      }
    }
  };
  button.addEventListener("click", run);
  for (const name of ["model", "data", "archive", "args", "fitter", "samples", "burn", "steps", "pop", "ntasks", "time"]) {
    const input = document.getElementById(name);
    if (input) input.addEventListener("change", run);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("fit-page");
  if (box) followFit(box);
  const table = document.getElementById("fits");
  if (table) {
    const filtered = new URLSearchParams(window.location.search).toString() !== "";
    refreshList(table, filtered);
    setInterval(() => refreshList(table, filtered), 2000);
  }
  const form = document.getElementById("submit-form");
  if (form) {
    helpForm(form);
    estimateForm(form);
  }
});
