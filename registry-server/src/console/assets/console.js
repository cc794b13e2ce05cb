// The blocks console's script: conveniences over pages that work without it.
// - copy buttons (`data-copy="<element id>"`),
// - choices between alternatives show only the chosen one (`data-choice-for`),
// - the live "name already taken" hint (`data-name-check`),
// - revealing a secret in place for a while (`form.reveal`), and hiding a revealed value
//   again (`data-hide-after`).

function setupCopy() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      if (!source) return;
      try {
        await navigator.clipboard.writeText(source.textContent);
        button.textContent = "Copied";
      } catch {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }
}

function setupChoices() {
  for (const select of document.querySelectorAll("select[data-choice]")) {
    const name = select.id;
    const update = () => {
      for (const part of document.querySelectorAll("[data-choice-for]")) {
        if (part.dataset.choiceFor !== name) continue;
        const chosen = part.dataset.choiceIndex === select.value;
        part.hidden = !chosen;
        for (const input of part.querySelectorAll("input, select, textarea, button")) {
          if (input.closest("[data-choice-for]") === part) input.disabled = !chosen;
        }
      }
    };
    select.addEventListener("change", update);
    update();
  }
}

function setupNameCheck() {
  const input = document.querySelector("input[data-name-check]");
  if (!input) return;
  const hint = document.getElementById(input.id + "-taken");
  let timer;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const name = input.value.trim();
      if (!hint) return;
      if (!name) { hint.textContent = ""; return; }
      const url = `/blocks/name-check?type=${encodeURIComponent(input.dataset.nameCheck)}&name=${encodeURIComponent(name)}`;
      try {
        const response = await fetch(url, { credentials: "same-origin" });
        if (!response.ok) return;
        const answer = await response.json();
        if (input.value.trim() !== name) return;
        hint.textContent = answer.problem ?? "";
      } catch {
        hint.textContent = "";
      }
    }, 250);
  });
}

// A revealed value is shown for `seconds`, then removed from the page, as it is when the
// page is left (so the back/forward cache keeps no value either).
function setupReveal() {
  const shown = new Set();
  const hide = (slot, form) => {
    slot.replaceChildren();
    slot.hidden = true;
    form.hidden = false;
    shown.delete(slot);
  };
  for (const form of document.querySelectorAll("form.reveal")) {
    const slot = document.getElementById(form.dataset.slot);
    if (!slot) continue;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      let answer;
      try {
        const response = await fetch(form.action, {
          method: "POST",
          body: new URLSearchParams(new FormData(form)),
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        });
        if (!response.ok) throw new Error(String(response.status));
        answer = await response.json();
      } catch {
        form.submit();
        return;
      }
      const code = document.createElement("code");
      code.className = "revealed-value";
      code.id = slot.id + "-value";
      code.textContent = answer.value;
      const copy = document.createElement("button");
      copy.type = "button";
      copy.className = "copy";
      copy.textContent = "Copy";
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(code.textContent);
          copy.textContent = "Copied";
        } catch {
          copy.textContent = "Select it and press Ctrl+C";
        }
      });
      const close = document.createElement("button");
      close.type = "button";
      close.className = "link";
      close.textContent = "Hide";
      close.addEventListener("click", () => hide(slot, form));
      const note = document.createElement("span");
      note.className = "hint";
      note.textContent = ` Hidden again in ${answer.hide_after} s.`;
      slot.replaceChildren(code, " ", copy, " ", close, note);
      slot.hidden = false;
      form.hidden = true;
      shown.add(slot);
      setTimeout(() => hide(slot, form), answer.hide_after * 1000);
    });
    window.addEventListener("pagehide", () => { if (shown.has(slot)) hide(slot, form); });
  }
  const page = document.querySelector("[data-hide-after]");
  if (page) {
    const leave = () => {
      page.replaceChildren();
      window.location.replace(page.dataset.back);
    };
    setTimeout(leave, Number(page.dataset.hideAfter) * 1000);
    window.addEventListener("pagehide", () => page.replaceChildren());
  }
}

setupCopy();
setupChoices();
setupNameCheck();
setupReveal();
