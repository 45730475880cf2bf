// recsys console: the one script. Pages work without it; it only keeps the Try it page in place
// when feedback is sent: the server renders the new answer, this swaps it in, marks what
// changed and moves focus to the message.
"use strict";

function enhanceFeedback(root) {
  root.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.matches("form[data-fragment]")) return;
    event.preventDefault();
    const submitter = event.submitter;
    const body = new URLSearchParams(new FormData(form, submitter));
    const buttons = form.querySelectorAll("button, select");
    buttons.forEach((b) => { b.disabled = true; });
    if (submitter) submitter.textContent = "Sending…";
    try {
      // getAttribute: the buttons are named "action", which shadows form.action.
      const response = await fetch(form.getAttribute("action"), {
        method: "POST", body, headers: { "x-console-fragment": "1" }, credentials: "same-origin",
      });
      if (response.headers.get("x-console-fragment") !== "1") {
        throw new Error("HTTP " + response.status);
      }
      root.innerHTML = await response.text();
      root.querySelectorAll(".rec.change-new, .rec.change-up, .rec.change-down")
        .forEach((li) => li.classList.add("flash"));
      const message = root.querySelector("#message");
      if (message) message.focus();
    } catch (error) {
      const p = document.createElement("p");
      p.className = "error";
      p.setAttribute("role", "alert");
      p.textContent = "The feedback was not sent (" + error.message + "): reload the page and try again.";
      root.prepend(p);
      buttons.forEach((b) => { b.disabled = false; });
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const results = document.getElementById("results");
  if (results) enhanceFeedback(results);
});
