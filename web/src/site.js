// Progressive enhancement for the public pages: mobile menu, tabs, copy
// buttons, the real API origin in snippets, and a "Dashboard" link when a
// session cookie pair is present.  Everything works without it.
import { h, initCopyButtons, initTabs } from './ui.js';

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

// After DELETE /account the dashboard sends the browser to /?account=deleted.
if (new URLSearchParams(location.search).get('account') === 'deleted') {
  const main = document.getElementById('main');
  main?.prepend(h('div.wrap.site-notice', h('div.alert.alert-ok', { id: 'site-notice', role: 'status' },
    h('strong', 'Your account has been deleted.'), ' ',
    'Everything it owned is gone and its login no longer works. Only its invoices are kept, as accounting and tax law require. Thank you for trying Lattice.')));
}

initTabs(document);
initCopyButtons(document);
