// The agency map: replay the program's growth (slider, play button) and show an agency's details on hover.
// Text goes in with textContent only, never as markup.
(() => {
  "use strict";
  const DAY_MS = 86400000;
  const FRAMES = 160;       // a replay shows the whole history in about 160 steps
  const STEP_MS = 50;       // of 50 ms each: 8 seconds
  const markers = Array.from(document.querySelectorAll("circle.agency"));
  const slider = document.getElementById("slider");
  const play = document.getElementById("play");
  const count = document.getElementById("count");
  const dateOut = document.getElementById("date");
  const tip = document.getElementById("tooltip");
  const map = document.getElementById("map");
  const days = markers.map((m) => Number(m.dataset.day));
  const fmt = (day) => new Date(day * DAY_MS).toISOString().slice(0, 10);
  let timer = null;

  function show(day) {
    let n = 0;
    markers.forEach((m, i) => {
      const on = days[i] <= day;
      m.classList.toggle("hidden", !on);
      if (on) n += 1;
    });
    dateOut.textContent = fmt(day);
    count.textContent = `${n} of ${markers.length} partner agencies by ${fmt(day)}`;
    map.dataset.visible = String(n);
  }

  function stop() {
    if (timer === null) return;
    clearInterval(timer);
    timer = null;
    play.textContent = "\u25B6 Play";
    play.setAttribute("aria-pressed", "false");
  }

  function start() {
    const lo = Number(slider.min);
    const hi = Number(slider.max);
    let day = Number(slider.value) >= hi ? lo : Number(slider.value);
    const step = Math.max(1, Math.ceil((hi - lo) / FRAMES));
    play.textContent = "\u275A\u275A Pause";
    play.setAttribute("aria-pressed", "true");
    slider.value = String(day);
    show(day);
    timer = setInterval(() => {
      day = Math.min(hi, day + step);
      slider.value = String(day);
      show(day);
      if (day >= hi) stop();
    }, STEP_MS);
  }

  slider.addEventListener("input", () => {
    stop();
    show(Number(slider.value));
  });
  play.addEventListener("click", () => (timer === null ? start() : stop()));

  function line(tag, text) {
    const el = document.createElement(tag);
    el.textContent = text;
    return el;
  }

  map.addEventListener("mouseover", (e) => {
    const m = e.target.closest ? e.target.closest("circle.agency") : null;
    if (!m) return;
    tip.replaceChildren(line("strong", m.dataset.name), line("span", `${m.dataset.state}, joined ${m.dataset.joined}`));
    const box = map.getBoundingClientRect();
    const r = m.getBoundingClientRect();
    tip.style.left = `${Math.min(r.right - box.left + 8, box.width - 240)}px`;
    tip.style.top = `${r.bottom - box.top + 8}px`;
    tip.hidden = false;
  });
  map.addEventListener("mouseout", (e) => {
    if (e.target.closest && e.target.closest("circle.agency")) tip.hidden = true;
  });

  show(Number(slider.value));
})();
