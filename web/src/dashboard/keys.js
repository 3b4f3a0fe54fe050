// API keys: create with scopes (shown once), rotate with a grace period,
// revoke, last used.
import { get, post, del } from '../api.js';
import { h, fill, listOf, pick, date, ago, timeEl, empty, failure, viewHead, toast, confirmDialog, SCOPES, scopeBadges } from './common.js';

const GRACES = [[0, 'No grace: old key stops now'], [3600, '1 hour'], [86400, '24 hours (default)'], [604800, '7 days']];

export async function render(root) {
  const list = h('div');
  const reveal = h('div');
  const name = h('input', { id: 'new-key-name', type: 'text', maxlength: 100, placeholder: 'e.g. payments-prod', required: true });
  const scopeBox = (id, checked, label) => {
    const box = h('input', { id: `scope-${id}`, type: 'checkbox', name: 'scopes', value: id, checked, 'aria-describedby': `scope-${id}-hint` });
    return [box, h('div.check', box, h('label', { for: `scope-${id}` }, label), h('p.hint', { id: `scope-${id}-hint` }, SCOPES[id]))];
  };
  const [ingestBox, ingestLabel] = scopeBox('ingest', true, 'Ingest');
  const [readBox, readLabel] = scopeBox('read', false, 'Read');
  const formError = h('div.alert.alert-error', { id: 'key-form-error', role: 'alert', hidden: true });
  const createBtn = h('button.btn.btn-primary', { type: 'submit' }, 'Create key');
  const form = h('form.key-form', { 'aria-describedby': 'key-form-note' },
    h('div.field', h('label', { for: 'new-key-name' }, 'New key name'), name),
    h('fieldset.scope-choices', h('legend', 'What the key may do'), ingestLabel, readLabel),
    formError,
    h('div.form-foot', createBtn,
      h('p.hint', { id: 'key-form-note' }, 'No key can manage keys, sessions, billing or the account: that takes this dashboard.')));

  // What to do with a key, from its scopes.
  function useNote(scopes) {
    if (!Array.isArray(scopes)) return null;
    if (scopes.includes('ingest') && scopes.includes('read')) {
      return h('p', 'This key can also read your data. A plugin needs only ingest: give services an ingest-only key.');
    }
    if (scopes.includes('ingest')) return h('p', 'Set it as LATTICE_API_KEY in the service; the plugin needs nothing more.');
    return h('p', 'Send it in the X-Lattice-API-Key header from scripts. The plugins cannot send data with it.');
  }

  function showSecret(title, k, note) {
    const scopes = pick(k, 'scopes');
    fill(reveal, h('div.alert.alert-ok', { role: 'status' }, h('strong', title), h('p', note),
      h('div.secret', h('code', { 'data-secret': '' }, k.key),
        h('button.btn.btn-small', { type: 'button', 'data-copy': '', 'data-copy-text': k.key }, 'Copy')),
      Array.isArray(scopes) ? h('p', 'Scopes: ', scopeBadges(scopes)) : null, useNote(scopes)));
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const scopes = [ingestBox, readBox].filter((b) => b.checked).map((b) => b.value);
    if (scopes.length === 0) {
      formError.textContent = 'Choose at least one scope: ingest, read, or both.';
      formError.hidden = false;
      ingestBox.focus();
      return;
    }
    formError.hidden = true;
    createBtn.disabled = true;
    try {
      const k = await post('/keys', { name: name.value.trim() || 'Default', scopes });
      name.value = '';
      ingestBox.checked = true;
      readBox.checked = false;
      showSecret(`Key "${k.name}" created.`, k, 'Copy it now: it is shown only once.');
      await load();
    } catch (err) {
      toast(err.message, 'error');
    } finally {
      createBtn.disabled = false;
    }
  });

  let replaced = new Set();
  function state(k) {
    const revoked = pick(k, 'revoked_at', 'revokedAt');
    const graceEnd = pick(k, 'expires_at', 'expiresAt', 'old_key_expires_at', 'grace_ends_at');
    if (revoked) return h('span.badge.badge-bad', `revoked ${ago(revoked)}`);
    if ((replaced.has(k.id) || pick(k, 'rotated_at', 'replaced_by')) && graceEnd) return h('span.badge.badge-warn', { title: date(graceEnd) }, `rotated · works until ${date(graceEnd)}`);
    if (graceEnd) return h('span.badge', { title: date(graceEnd) }, `expires ${ago(graceEnd)}`);
    return h('span.badge.badge-ok', 'active');
  }

  async function rotate(k) {
    const sel = h('select', { id: 'grace' }, GRACES.map(([v, l]) => h('option', { value: v }, l)));
    sel.value = '86400';
    const ok = h('button.btn.btn-primary', { type: 'button' }, 'Rotate');
    const cancel = h('button.btn', { type: 'button' }, 'Cancel');
    const dlg = h('dialog', { 'aria-labelledby': 'rot-title' }, h('h2', { id: 'rot-title' }, `Rotate "${k.name}"`),
      h('p', 'You get a new key. The old one keeps working for the grace period so you can redeploy.'),
      h('div.field', h('label', { for: 'grace' }, 'Grace period for the old key'), sel), h('div.actions', cancel, ok));
    document.body.append(dlg);
    dlg.showModal();
    const choice = await new Promise((resolve) => {
      ok.addEventListener('click', () => resolve(Number(sel.value)));
      cancel.addEventListener('click', () => resolve(null));
      dlg.addEventListener('cancel', () => resolve(null));
    });
    dlg.close(); dlg.remove();
    if (choice == null) return;
    try {
      const nk = await post(`/keys/${encodeURIComponent(k.id)}/rotate`, { grace_seconds: choice });
      const until = pick(nk, 'old_key_expires_at', 'oldKeyExpiresAt');
      showSecret(`Key "${k.name}" rotated.`, { ...nk, scopes: pick(nk, 'scopes') ?? pick(k, 'scopes') }, `Copy the new key now: it is shown only once. ${until ? `The old key works until ${date(until)}.` : 'The old key no longer works.'}`);
      await load();
    } catch (err) {
      toast(err.message, 'error');
    }
  }

  async function revoke(k) {
    if (!(await confirmDialog(`Revoke "${k.name}"?`, 'Services using this key are refused from their next request. This cannot be undone.', 'Revoke key', true))) return;
    try {
      await del(`/keys/${encodeURIComponent(k.id)}`);
      toast(`Key "${k.name}" revoked`);
      await load();
    } catch (err) {
      toast(err.message, 'error');
    }
  }

  async function load() {
    let keys;
    try {
      keys = listOf(await get('/keys'), 'keys');
      replaced = new Set(keys.map((k) => pick(k, 'rotated_from', 'rotatedFrom')).filter(Boolean));
    } catch (err) {
      if (err.status === 401) throw err;
      fill(list, failure(err, load));
      return;
    }
    if (keys.length === 0) {
      fill(list, empty('No API keys yet', 'Create one above; your services send it in the X-Lattice-API-Key header.'));
      return;
    }
    fill(list, h('div.table-wrap', h('table.data', { 'aria-label': 'API keys' },
      h('thead', h('tr', h('th', 'Name'), h('th', 'Key'), h('th', 'Scopes'), h('th', 'Created'), h('th', 'Last used'), h('th', 'State'), h('th', h('span.visually-hidden', 'Actions')))),
      h('tbody', keys.map((k) => {
        const revoked = pick(k, 'revoked_at', 'revokedAt');
        return h('tr', { class: revoked ? 'revoked' : '', 'data-key-id': k.id },
          h('td', h('strong', k.name || '—')),
          h('td', h('code', `${k.prefix || 'ltc_'}…`)),
          h('td', scopeBadges(pick(k, 'scopes')) || h('span.muted', '—')),
          h('td', timeEl(pick(k, 'created_at', 'createdAt'), date(pick(k, 'created_at', 'createdAt')))),
          h('td', pick(k, 'last_used_at', 'last_used', 'lastUsedAt', 'lastUsed') ? timeEl(pick(k, 'last_used_at', 'last_used', 'lastUsedAt', 'lastUsed')) : h('span.muted', 'never')),
          h('td', state(k)),
          h('td', revoked ? null : [h('button.btn.btn-small', { type: 'button', onclick: () => rotate(k) }, 'Rotate'), ' ',
            h('button.btn.btn-small.btn-danger', { type: 'button', onclick: () => revoke(k) }, 'Revoke')]));
      })))));
  }

  fill(root, viewHead('API keys'), h('section.panel', h('h2', 'Create a key'), form, reveal), h('section.panel', h('h2', 'Your keys'), list));
  await load();
  return null;
}
