// keyapi-stories gallery: the one script (no build step, no inline script, no eval).
(() => {
  "use strict";
  const SEEN = "keyapi-gallery-last-seen";
  const BASE = "keyapi-gallery-visit-baseline";
  const AUTO = "keyapi-gallery-autoplay";
  const IMAGE_SECONDS = 5;

  // "New since my last visit": localStorage keeps the highest story number
  // this browser was shown; a visit (a browser session) starts by taking that
  // number as its baseline, then moves it up to the archive's latest, so the
  // "new" view lists what arrived between the last visit and this one.
  const latest = Number(document.body.dataset.latest || "0");
  let baseline = sessionStorage.getItem(BASE);
  if (baseline === null || !/^\d+$/.test(baseline)) {
    const stored = localStorage.getItem(SEEN);
    baseline = stored !== null && /^\d+$/.test(stored) ? stored : String(latest);
    sessionStorage.setItem(BASE, baseline);
  }
  localStorage.setItem(SEEN, String(Math.max(latest, Number(localStorage.getItem(SEEN) || "0"))));
  const newLink = document.getElementById("new-link");
  if (newLink) {
    newLink.href = "/new?after=" + encodeURIComponent(baseline);
    newLink.classList.toggle("has-new", Number(baseline) < latest);
  }
  const mark = document.getElementById("mark-seen");
  if (mark) {
    mark.addEventListener("click", () => {
      sessionStorage.setItem(BASE, String(latest));
      location.href = "/new?after=" + latest;
    });
  }

  // Filters apply as soon as the media kind changes.
  const kind = document.getElementById("kind");
  if (kind && kind.form) {
    kind.addEventListener("change", () => kind.form.requestSubmit());
  }

  // The player: keys, taps (the links over the stage), space, autoplay.
  const player = document.getElementById("player");
  if (!player) {
    return;
  }
  const media = document.getElementById("media");
  const video = media instanceof HTMLVideoElement ? media : null;
  const auto = document.getElementById("autoplay");
  const go = (which) => {
    const href = player.dataset[which];
    if (href) {
      location.href = href;
    }
  };
  let timer = null;
  let paused = false;
  const schedule = () => {
    clearTimeout(timer);
    if (auto && auto.checked && !video && !paused) {
      timer = setTimeout(() => go("next"), IMAGE_SECONDS * 1000);
    }
  };
  if (auto) {
    auto.checked = localStorage.getItem(AUTO) === "1";
    auto.addEventListener("change", () => {
      localStorage.setItem(AUTO, auto.checked ? "1" : "0");
      schedule();
    });
  }
  if (video) {
    video.addEventListener("ended", () => {
      if (auto && auto.checked) {
        go("next");
      }
    });
    const started = video.play();
    if (started) {
      started.catch(() => {}); // autoplay refused: the controls are there
    }
  }
  schedule();
  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) {
      return;
    }
    if (event.key === "ArrowRight") {
      event.preventDefault();
      go("next");
    } else if (event.key === "ArrowLeft") {
      event.preventDefault();
      go("prev");
    } else if (event.key === "Escape") {
      go("back");
    } else if (event.key === " ") {
      event.preventDefault();
      if (video) {
        if (video.paused) {
          video.play();
        } else {
          video.pause();
        }
      } else {
        paused = !paused;
        schedule();
      }
    }
  });
})();
