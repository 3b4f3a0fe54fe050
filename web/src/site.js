// Progressive enhancement for the public pages: mobile menu, tabs, copy
// buttons, the real API origin in snippets, and a "Dashboard" link when a
// session cookie pair is present.  Everything works without it.
import { initCopyButtons, initTabs } from './ui.js';

const toggle = document.querySelector('.nav-toggle');
const nav = document.getElementById('site-nav');
if (toggle && nav) {
  toggle.addEventListener('click', () => {
    const open = nav.classList.toggle('open');
    toggle.setAttribute('aria-expanded', String(open));
  });
}

for (const el of document.querySelectorAll('[data-origin]')) el.textContent = location.origin;

// lattice_csrf is the readable half of the session pair: a hint, not proof.
if (/(?:^|;\s*)lattice_csrf=/.test(document.cookie)) {
  for (const el of document.querySelectorAll('[data-guest]')) el.hidden = true;
  for (const el of document.querySelectorAll('[data-member]')) el.hidden = false;
}

initTabs(document);
initCopyButtons(document);
