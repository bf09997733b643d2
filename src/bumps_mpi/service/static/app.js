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

function setState(element, state) {
  if (!element) return;
  element.textContent = state;
  element.className = "state " + state.replace(/[^A-Z_]/g, "");
}

// One fit's page: follow its events; when it ends, reload to show its results and figures.
function followFit(box) {
  if (box.dataset.terminal === "yes" || !window.EventSource) return;
  const source = new EventSource(box.dataset.events);
  source.onmessage = (event) => {
    const fit = JSON.parse(event.data);
    setState(document.getElementById("state"), fit.state);
    setText(document.getElementById("reason"), fit.reason || fit.message || "");
    const bar = document.getElementById("progress");
    if (bar && fit.progress) bar.value = fit.progress.percent;
    setText(document.getElementById("progress-text"), progressText(fit.progress));
  };
  source.addEventListener("end", () => {
    source.close();
    window.location.reload();
  });
}

// My fits: refresh the states, the chi-squares and the progress of the running ones.
async function refreshList(table) {
  try {
    const answer = await fetch(table.dataset.live, { credentials: "same-origin" });
    if (!answer.ok) return;
    const fits = await answer.json();
    for (const fit of fits) {
      const row = table.querySelector('tr[data-fit="' + CSS.escape(fit.id) + '"]');
      if (!row) {
        window.location.reload(); // a fit submitted elsewhere: show it
        return;
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
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("fit");
  if (box) followFit(box);
  const table = document.getElementById("fits");
  if (table) {
    refreshList(table);
    setInterval(() => refreshList(table), 2000);
  }
});
