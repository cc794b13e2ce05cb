// The blocks console's script: conveniences over pages that work without it.
// - copy buttons (`data-copy="<element id>"`),
// - choices between alternatives show only the chosen one (`data-choice-for`),
// - the live "name already taken" hint (`data-name-check`),
// - revealing a secret in place for a while (`form.reveal`), and hiding a revealed value
//   again (`data-hide-after`),
// - the key re-encryption's progress, kept up to date (`data-progress-url`).

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

// A revealed value is shown for the time the server says, then removed from the page, as
// it is when the page is left (so the back/forward cache keeps no value either). Focus
// moves to the value's Copy button, and back to Reveal when it is hidden.
function setupReveal() {
  for (const form of document.querySelectorAll("form.reveal")) {
    const slot = document.getElementById(form.dataset.slot);
    if (!slot) continue;
    let timer;
    const hide = (refocus) => {
      clearTimeout(timer);
      slot.replaceChildren();
      slot.hidden = true;
      form.hidden = false;
      if (refocus) form.querySelector("button")?.focus();
    };
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      let response;
      try {
        response = await fetch(form.action, {
          method: "POST",
          body: new URLSearchParams(new FormData(form)),
          headers: { Accept: "application/json" },
          credentials: "same-origin",
        });
      } catch {
        form.submit();
        return;
      }
      const type = response.headers.get("content-type") ?? "";
      if (!type.startsWith("application/json")) {
        if (response.ok) {
          // Sent to the sign-in page: the session ended.
          window.location.reload();
          return;
        }
        clearTimeout(timer);
        slot.textContent = `Not revealed (HTTP ${response.status}): reload the page to see why.`;
        slot.hidden = false;
        return;
      }
      const answer = await response.json();
      const code = document.createElement("code");
      code.className = "revealed-value";
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
      close.addEventListener("click", () => hide(true));
      const note = document.createElement("span");
      note.className = "hint";
      note.textContent = ` Hidden again in ${answer.hide_after} s.`;
      clearTimeout(timer);
      slot.replaceChildren(code, " ", copy, " ", close, note);
      slot.hidden = false;
      form.hidden = true;
      copy.focus();
      timer = setTimeout(() => hide(slot.contains(document.activeElement)), answer.hide_after * 1000);
    });
    window.addEventListener("pagehide", () => hide(false));
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

function setupProgress() {
  const box = document.querySelector("[data-progress-url]");
  if (!box) return;
  const bar = box.querySelector("progress");
  const text = box.querySelector("[role=status]");
  const poll = async () => {
    let done = false;
    try {
      const response = await fetch(box.dataset.progressUrl, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        const p = await response.json();
        bar.max = Math.max(p.total, 1);
        bar.value = p.total === 0 ? 1 : p.moved;
        bar.textContent = `${p.total === 0 ? 100 : Math.floor((p.moved * 100) / p.total)}%`;
        done = p.done;
        text.textContent = done
          ? `Done: every version (${p.total}) is sealed under the active key.`
          : `${p.moved} of ${p.total} versions sealed under the active key; ${p.remaining} to go.`;
        box.dataset.done = done ? "true" : "false";
      }
    } catch {
      // A failed poll is tried again; the Refresh link still works.
    }
    if (!done) setTimeout(poll, 500);
  };
  poll();
}

setupCopy();
setupChoices();
setupNameCheck();
setupReveal();
setupProgress();
