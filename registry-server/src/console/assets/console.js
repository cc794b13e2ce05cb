// The blocks console's script: conveniences over pages that work without it.
// - copy buttons (`data-copy="<element id>"`),
// - choices between alternatives show only the chosen one (`data-choice-for`),
// - the live "name already taken" hint (`data-name-check`).

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

setupCopy();
setupChoices();
setupNameCheck();
