// The blocks console's script: conveniences over pages that work without it.
// - copy buttons (`data-copy="<element id>"`),
// - choices between alternatives show only the chosen one (`data-choice-for`),
// - the live "name already taken" hint (`data-name-check`),
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
setupProgress();
