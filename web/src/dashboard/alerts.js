// Alerts (docs/alerts.md): the incidents (open ones first, then the history)
// with acknowledge and mute; the rules, saved with PUT /alerts/rules (a 400
// names the field in error.details.path); the channels (e-mail, signed
// webhook, Slack) with a test send, enable/disable, a new signing secret
// (shown once), deletion and their delivery log.
import { get, post, patch, del, api, tooManyText } from '../api.js';
import { h, fill, listOf, date, timeEl, empty, failure, viewHead, toast, confirmDialog } from './common.js';
import { RULES, ruleName, subjectNodes, stateBadges } from './incidents.js';

const MUTES = [[60, '1 hour'], [1440, '1 day'], [10080, '1 week']];

// The rules' fields in words (the API's GET decides which exist; a field it
// adds later is shown under its own name).
const RULE_HELP = {
  service_down: 'A registered service has not reported for 15 minutes.',
  error_rate: 'The 5xx share of a service or a connection over the window reaches the threshold.',
  latency: 'A route’s or a connection’s p95 over the window is above the limit, or far above its level a week earlier.',
  topology: 'The map changes: a new caller, a removed dependency, a new cycle.',
  ingest_refused: 'The plugins’ data was refused (quota or entitlement).',
};
const FIELDS = {
  enabled: 'On',
  window_minutes: ['Window', 'minutes'],
  threshold_percent: ['Fires at', '% 5xx'],
  clear_percent: ['Clears below', '%'],
  p95_ms: ['p95 above', 'ms'],
  week_factor: ['Or last week’s p95 times', '×'],
  min_requests: ['At least', 'requests'],
  new_caller: 'A new caller of a service',
  new_external_caller: 'A new external (unregistered) caller',
  dependency_removed: 'A service dependency or a package removed',
  new_cycle: 'A new circular dependency',
  cooldown_minutes: ['Cool-down', 'minutes'],
  recover_after_minutes: ['Resolve after clear for', 'minutes'],
};
const fieldWords = (k) => FIELDS[k] || [k.replace(/_/g, ' '), ''];
// the order fields are shown in (the API's JSON has its own); others after
const ORDER = Object.keys(FIELDS);
const byOrder = (a, b) => (ORDER.indexOf(a) + 1 || 999) - (ORDER.indexOf(b) + 1 || 999) || a.localeCompare(b);
const KINDS = { email: 'E-mail', webhook: 'Webhook', slack: 'Slack' };
const pathOf = (err) => (err && err.details && typeof err.details.path === 'string' ? err.details.path : null);

export async function render(root, ctx) {
  let gone = false;
  const incidentsBox = h('div', { id: 'alert-incidents' });
  const historyBox = h('div', { id: 'alert-history' });
  const rulesBox = h('div', { id: 'alert-rules' });
  const channelsBox = h('div', { id: 'alert-channels' });
  const reveal = h('div', { id: 'channel-secret-box' });

  // ---- incidents -------------------------------------------------------------
  let historyBefore = null;

  function incidentItem(i, reload) {
    const actions = h('div.incident-actions');
    const busy = async (btn, fn) => {
      btn.disabled = true;
      btn.setAttribute('aria-busy', 'true');
      try {
        await fn();
      } catch (err) {
        if (err.status === 401) throw err;
        toast(err.status === 429 ? tooManyText(err) : err.message, 'error');
      } finally {
        btn.disabled = false;
        btn.removeAttribute('aria-busy');
      }
    };
    if (i.status === 'open' && !i.acknowledged_at) {
      const ack = h('button.btn.btn-small', { type: 'button', 'data-action': 'acknowledge' }, 'Acknowledge');
      ack.addEventListener('click', () => busy(ack, async () => {
        await post(`/alerts/incidents/${encodeURIComponent(i.id)}/acknowledge`);
        toast('Incident acknowledged');
        await reload();
      }));
      actions.append(ack);
    }
    const sel = h('select', { 'aria-label': `Mute “${i.summary || ruleName(i.rule)}” for`, 'data-mute-minutes': '' },
      MUTES.map(([v, l]) => h('option', { value: v }, l)));
    const mute = h('button.btn.btn-small', { type: 'button', 'data-action': 'mute' }, 'Mute');
    mute.addEventListener('click', () => busy(mute, async () => {
      const r = await post(`/alerts/incidents/${encodeURIComponent(i.id)}/mute`, { minutes: Number(sel.value) });
      const until = r && r.incident && r.incident.muted_until;
      toast(until ? `Muted until ${date(until)}` : 'Muted');
      await reload();
    }));
    actions.append(h('span.mute-choice', sel, mute));
    return h('li.incident', { 'data-incident-id': String(i.id), 'data-status': i.status, class: i.status === 'open' ? 'open' : '' },
      h('div.incident-head', h('span.badge', { class: i.status === 'open' ? 'badge-bad' : '' }, ruleName(i.rule)),
        h('strong.incident-summary', i.summary || ''), stateBadges(i)),
      h('div.incident-subject', h('span.muted', 'Subject: '), subjectNodes(i.subject)),
      h('div.incident-times.muted',
        'Opened ', timeEl(i.opened_at, date(i.opened_at)), ' (', timeEl(i.opened_at), ')',
        i.resolved_at ? [' · resolved ', timeEl(i.resolved_at, date(i.resolved_at))] : null,
        i.acknowledged_at ? [' · acknowledged ', timeEl(i.acknowledged_at)] : null,
        i.notified === false ? ' · not sent (cool-down or muted)' : null),
      actions);
  }

  async function loadIncidents() {
    let open;
    let all;
    try {
      [open, all] = await Promise.all([get('/alerts/incidents?status=open&limit=100'), get('/alerts/incidents?status=all&limit=50')]);
    } catch (err) {
      if (err.status === 401) throw err;
      fill(incidentsBox, failure(err, loadIncidents));
      fill(historyBox);
      return;
    }
    if (gone) return;
    const openList = listOf(open, 'incidents');
    fill(incidentsBox, openList.length === 0
      ? h('p.muted.all-clear', { id: 'no-open-incidents' }, 'No open incident: everything is quiet.')
      : h('ul.list-plain.incident-list', { 'aria-label': 'Open incidents' }, openList.map((i) => incidentItem(i, loadIncidents))));
    const past = listOf(all, 'incidents').filter((i) => i.status !== 'open');
    historyBefore = all && all.next_before;
    const list = h('ul.list-plain.incident-list', { 'aria-label': 'Incident history' }, past.map((i) => incidentItem(i, loadIncidents)));
    const more = h('button.btn.btn-small', { type: 'button', hidden: !historyBefore }, 'Older incidents');
    more.addEventListener('click', async () => {
      more.disabled = true;
      try {
        const d = await get(`/alerts/incidents?status=all&limit=50&before=${encodeURIComponent(historyBefore)}`);
        for (const i of listOf(d, 'incidents')) if (i.status !== 'open') list.append(incidentItem(i, loadIncidents));
        historyBefore = d && d.next_before;
        more.hidden = !historyBefore;
      } catch (err) {
        if (err.status === 401) throw err;
        toast(err.message, 'error');
      } finally {
        more.disabled = false;
      }
    });
    fill(historyBox, past.length === 0 && !historyBefore ? h('p.muted', 'No resolved incident yet.') : [list, h('p.pager', more)]);
  }

  // ---- rules -------------------------------------------------------------------
  function numberField(path, key, value, dflt) {
    const [label, unit] = fieldWords(key);
    const id = `ar-${path.replace(/\./g, '-')}`;
    const input = h('input', { id, type: 'number', step: 'any', inputmode: 'decimal', 'data-path': path, 'aria-describedby': `${id}-hint` });
    input.value = value == null ? '' : String(value);
    return h('div.field.rule-field', h('label', { for: id }, label),
      h('div.with-unit', input, unit ? h('span.unit', unit) : null),
      h('p.hint', { id: `${id}-hint` }, dflt != null ? `Default ${dflt}` : ''),
      h('p.field-error', { id: `${id}-error`, hidden: true }));
  }
  function boolField(path, key, value) {
    const id = `ar-${path.replace(/\./g, '-')}`;
    const box = h('input', { id, type: 'checkbox', 'data-path': path, checked: value === true });
    return h('div.check.rule-check', box, h('label', { for: id }, typeof FIELDS[key] === 'string' ? FIELDS[key] : key.replace(/_/g, ' ')),
      h('p.field-error', { id: `${id}-error`, hidden: true }));
  }

  function drawRules(state, saved = false) {
    const defaults = state.defaults || {};
    const rules = state.rules || {};
    const error = h('div.alert.alert-error', { id: 'rules-error', role: 'alert', tabindex: -1, hidden: true });
    const save = h('button.btn.btn-primary', { type: 'submit' }, 'Save rules');
    const savedNote = h('div.alert.alert-ok', { id: 'rules-saved', role: 'status', hidden: !saved }, 'Rules saved.');
    const names = [...Object.keys(RULES).filter((r) => r in rules), ...Object.keys(rules).filter((r) => !(r in RULES))];
    const fieldsets = names.map((r) => {
      const rule = rules[r] || {};
      const d = (defaults.rules && defaults.rules[r]) || {};
      const toggleId = `ar-rules-${r}-enabled`;
      const toggle = h('input', { id: toggleId, type: 'checkbox', role: 'switch', 'data-path': `rules.${r}.enabled`, checked: rule.enabled === true });
      const others = Object.keys(rule).filter((k) => k !== 'enabled').sort(byOrder);
      const body = h('div.rule-fields',
        others.filter((k) => typeof rule[k] === 'number').map((k) => numberField(`rules.${r}.${k}`, k, rule[k], d[k])),
        others.filter((k) => typeof rule[k] === 'boolean').map((k) => boolField(`rules.${r}.${k}`, k, rule[k])));
      const fs = h('fieldset.rule', { 'data-rule': r, class: rule.enabled ? '' : 'off' },
        h('legend', ruleName(r)),
        h('div.rule-toggle', toggle, h('label', { for: toggleId }, 'Enabled'), h('p.hint', RULE_HELP[r] || ''),
          h('p.field-error', { id: `${toggleId}-error`, hidden: true })),
        others.length ? body : null);
      toggle.addEventListener('change', () => fs.classList.toggle('off', !toggle.checked));
      return fs;
    });
    const general = h('fieldset.rule', { 'data-rule': 'general' }, h('legend', 'Every rule'),
      h('div.rule-fields',
        numberField('cooldown_minutes', 'cooldown_minutes', state.cooldown_minutes, defaults.cooldown_minutes),
        numberField('recover_after_minutes', 'recover_after_minutes', state.recover_after_minutes, defaults.recover_after_minutes)),
      h('p.hint', 'An incident that opens again within the cool-down of the last one sent is recorded but not sent. An incident resolves once its condition has been clear this long.'));
    const form = h('form.rules-form', { id: 'rules-form', novalidate: true, 'aria-label': 'Alert rules' },
      h('div.rules-grid', fieldsets, general), error, savedNote, h('div.form-foot', save));

    const clearErrors = () => {
      error.hidden = true;
      savedNote.hidden = true;
      for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
      for (const el of form.querySelectorAll('.field-error')) { el.hidden = true; el.textContent = ''; }
      for (const el of form.querySelectorAll('.has-error')) el.classList.remove('has-error');
    };
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearErrors();
      const body = { rules: {} };
      for (const input of form.querySelectorAll('[data-path]')) {
        const v = input.type === 'checkbox' ? input.checked : input.value.trim() === '' ? null : Number(input.value);
        const parts = input.dataset.path.split('.');
        if (parts[0] === 'rules') (body.rules[parts[1]] ||= {})[parts[2]] = v;
        else body[parts[0]] = v;
      }
      save.disabled = true;
      save.setAttribute('aria-busy', 'true');
      try {
        const next = await api('PUT', '/alerts/rules', body);
        if (gone) return;
        drawRules(next, true);
        toast('Alert rules saved');
      } catch (err) {
        if (err.status === 401) throw err;
        error.textContent = err.status === 429 ? tooManyText(err) : err.message;
        error.hidden = false;
        const path = pathOf(err);
        const input = path ? [...form.querySelectorAll('[data-path]')].find((x) => x.dataset.path === path) : null;
        if (input) {
          input.setAttribute('aria-invalid', 'true');
          const box = input.closest('.field, .check, .rule-toggle');
          if (box) box.classList.add('has-error');
          const note = document.getElementById(`${input.id}-error`);
          // next to the field, without the path the field already is
          const own = err.message.startsWith(`${path} `) ? err.message.slice(path.length + 1) : err.message;
          if (note) { note.textContent = own.charAt(0).toUpperCase() + own.slice(1); note.hidden = false; input.setAttribute('aria-errormessage', note.id); }
          input.focus();
        } else {
          error.focus();
        }
      } finally {
        save.disabled = false;
        save.removeAttribute('aria-busy');
      }
    });
    fill(rulesBox, form);
  }

  async function loadRules() {
    try {
      const state = await get('/alerts/rules');
      if (!gone) drawRules(state);
    } catch (err) {
      if (err.status === 401) throw err;
      fill(rulesBox, failure(err, loadRules));
    }
  }

  // ---- channels ------------------------------------------------------------------
  function showSecret(box, title, secret) {
    fill(box, h('div.alert.alert-ok.secret-once', { role: 'status' }, h('strong', title),
      h('p', 'Copy the signing secret now: it will not be shown again. Your receiver checks each request’s Lattice-Signature header with it.'),
      h('div.secret', h('code', { 'data-secret': '' }, secret),
        h('button.btn.btn-small', { type: 'button', 'data-copy': '', 'data-copy-text': secret }, 'Copy')),
      h('p.done-action', h('button.btn.btn-small', { type: 'button', onclick: () => fill(box) }, 'I have copied it'))));
  }

  function deliveryTable(list) {
    if (list.length === 0) return h('p.muted', 'Nothing sent yet.');
    return h('div.table-wrap', h('table.data', { 'aria-label': 'Deliveries' },
      h('thead', h('tr', h('th', 'Event'), h('th', 'Status'), h('th.num', 'Attempts'), h('th.num', 'Answer'), h('th', 'Last error'), h('th', 'Queued'), h('th', 'Done'))),
      h('tbody', list.map((d) => h('tr', { 'data-delivery-id': String(d.id) },
        h('td', d.event || '—', d.incident_id != null ? h('span.muted', ` #${d.incident_id}`) : null),
        h('td', h('span.badge', { class: d.status === 'done' || d.status === 'sent' ? 'badge-ok' : d.status === 'failed' ? 'badge-bad' : '' }, d.status || '—'),
          d.next_attempt_at ? h('span.muted', ' next ', timeEl(d.next_attempt_at)) : null),
        h('td.num', d.attempts ?? '—'),
        h('td.num', d.response_status ?? '—'),
        h('td.delivery-error', d.last_error || '—'),
        h('td', timeEl(d.created_at, date(d.created_at))),
        h('td', d.done_at ? timeEl(d.done_at, date(d.done_at)) : '—'))))));
  }

  function lastDelivery(d) {
    if (!d) return h('span.muted', 'nothing sent yet');
    const ok = d.status === 'done' || d.status === 'sent';
    return h('span', h('span.badge', { class: ok ? 'badge-ok' : d.status === 'failed' ? 'badge-bad' : '' }, d.status || '—'), ' ',
      d.event || '', d.response_status != null ? ` · ${d.response_status}` : '', ' · ', timeEl(d.done_at || d.created_at));
  }

  function channelItem(c) {
    const cid = encodeURIComponent(c.id);
    const result = h('p.channel-result', { 'data-test-result': '', role: 'status', hidden: true });
    const secretBox = h('div.channel-secret');
    const say = (kind, ...msg) => { result.className = `channel-result ${kind}`; fill(result, ...msg); result.hidden = false; };
    const act = (label, attrs, fn) => {
      const b = h('button.btn.btn-small', { type: 'button', ...attrs }, label);
      b.addEventListener('click', async () => {
        b.disabled = true;
        b.setAttribute('aria-busy', 'true');
        try {
          await fn(b);
        } catch (err) {
          if (err.status === 401) throw err;
          say('bad', err.status === 429 ? tooManyText(err) : err.message);
        } finally {
          b.disabled = false;
          b.removeAttribute('aria-busy');
        }
      });
      return b;
    };
    const test = act('Send test', { 'data-action': 'test', disabled: !c.verified }, async () => {
      say('', h('span.spinner', { 'aria-hidden': 'true' }), ' Sending a test…');
      try {
        const r = await post(`/alerts/channels/${cid}/test`);
        say('ok', h('strong', { 'data-delivered': 'true' }, 'Delivered.'), r && r.status != null ? ` The receiver answered ${r.status}.` : '');
      } catch (err) {
        if (err.status === 401) throw err;
        const d = err.details || {};
        say('bad', h('strong', { 'data-delivered': 'false' }, 'Not delivered: '), err.status === 429 ? tooManyText(err) : err.message,
          d.status != null ? ` (answer ${d.status})` : '', d.error && d.error !== err.message ? ` — ${d.error}` : '');
      }
      loadChannels(true);
    });
    const toggle = act(c.enabled ? 'Disable' : 'Enable', { 'data-action': c.enabled ? 'disable' : 'enable' }, async () => {
      await patch(`/alerts/channels/${cid}`, { enabled: !c.enabled });
      toast(`“${c.name}” ${c.enabled ? 'disabled' : 'enabled'}`);
      await loadChannels();
    });
    const rotate = c.kind !== 'webhook' ? null : act('New secret', { 'data-action': 'secret' }, async () => {
      if (!(await confirmDialog(`New signing secret for “${c.name}”?`, 'The old secret stops working at once: deliveries are signed with the new one from now on.', 'Make a new secret'))) return;
      const r = await post(`/alerts/channels/${cid}/secret`);
      showSecret(secretBox, `New signing secret for “${c.name}”.`, r.secret);
    });
    const remove = act('Delete', { 'data-action': 'delete', class: 'btn-danger' }, async () => {
      if (!(await confirmDialog(`Delete “${c.name}”?`, 'Alerts stop going to it, and its pending deliveries are dropped.', 'Delete channel', true))) return;
      await del(`/alerts/channels/${cid}`);
      toast(`“${c.name}” deleted`);
      await loadChannels();
    });

    const log = h('div.deliveries-body');
    const expander = h('details.deliveries', h('summary', 'Deliveries'), log);
    const loadLog = async () => {
      fill(log, h('p.muted', h('span.spinner', { 'aria-hidden': 'true' }), ' Loading…'));
      try {
        fill(log, deliveryTable(listOf(await get(`/alerts/channels/${cid}/deliveries?limit=50`), 'deliveries')));
      } catch (err) {
        if (err.status === 401) throw err;
        fill(log, failure(err, loadLog));
      }
    };
    expander.addEventListener('toggle', () => { if (expander.open) loadLog(); });

    return h('li.channel', { 'data-channel-id': String(c.id), 'data-kind': c.kind, class: c.enabled ? '' : 'disabled' },
      h('div.channel-head', h('strong.channel-name', c.name), h('span.badge.badge-brand', KINDS[c.kind] || c.kind),
        c.verified ? h('span.badge.badge-ok', { 'data-verified': 'true' }, 'verified')
          : h('span.badge.badge-warn', { 'data-verified': 'false', title: 'The address has not followed the confirmation link yet' }, 'awaiting confirmation'),
        c.enabled ? null : h('span.badge', 'disabled')),
      h('div.channel-target', h('code', c.target || '')),
      h('div.channel-meta.muted', 'Last delivery: ', lastDelivery(c.last_delivery), ' · added ', timeEl(c.created_at, date(c.created_at))),
      c.verified ? null : h('p.hint', 'Nothing is sent to this address until it follows the link we e-mailed to it.'),
      h('div.channel-actions', test, toggle, rotate, remove),
      result, secretBox, expander);
  }

  // keepResults: redraw the list but keep each channel's test result and open log
  let channelItems = new Map();
  async function loadChannels(keepResults = false) {
    let list;
    try {
      list = listOf(await get('/alerts/channels'), 'channels');
    } catch (err) {
      if (err.status === 401) throw err;
      fill(channelsBox, failure(err, () => loadChannels()));
      return;
    }
    if (gone) return;
    if (list.length === 0) {
      channelItems = new Map();
      fill(channelsBox, empty('No channel yet', 'Add an e-mail address, a webhook or a Slack incoming webhook below: incidents are sent to every enabled channel.'));
      return;
    }
    const items = new Map();
    const ul = h('ul.list-plain.channel-list', { 'aria-label': 'Alert channels' }, list.map((c) => {
      const el = channelItem(c);
      const before = channelItems.get(String(c.id));
      if (keepResults && before) {
        const r = before.querySelector('[data-test-result]');
        if (r && !r.hidden) el.querySelector('[data-test-result]').replaceWith(r);
        const s = before.querySelector('.channel-secret');
        if (s && s.childElementCount) el.querySelector('.channel-secret').replaceWith(s);
        const d = before.querySelector('details.deliveries');
        if (d && d.open) el.querySelector('details.deliveries').open = true;
      }
      items.set(String(c.id), el);
      return el;
    }));
    channelItems = items;
    fill(channelsBox, ul);
  }

  // the add form
  const kind = h('select', { id: 'ch-kind', name: 'kind', 'data-path': 'kind' },
    h('option', { value: 'email' }, 'E-mail'), h('option', { value: 'webhook' }, 'Webhook'), h('option', { value: 'slack' }, 'Slack'));
  const name = h('input', { id: 'ch-name', name: 'name', type: 'text', maxlength: 100, placeholder: 'e.g. On-call', 'data-path': 'name' });
  const address = h('input', { id: 'ch-address', name: 'address', type: 'email', maxlength: 254, placeholder: 'ops@example.com', 'data-path': 'address', autocomplete: 'email' });
  const url = h('input', { id: 'ch-url', name: 'url', type: 'text', inputmode: 'url', maxlength: 2048, placeholder: 'https://', 'data-path': 'url', spellcheck: 'false' });
  const addressField = h('div.field', h('label', { for: 'ch-address' }, 'Address'), address);
  const urlHint = h('p.hint', { id: 'ch-url-hint' });
  const urlField = h('div.field', { hidden: true }, h('label', { for: 'ch-url' }, 'URL'), url, urlHint);
  const addError = h('div.alert.alert-error', { id: 'channel-form-error', role: 'alert', tabindex: -1, hidden: true });
  const addBtn = h('button.btn.btn-primary', { type: 'submit' }, 'Add channel');
  const addForm = h('form.channel-form', { id: 'channel-form', novalidate: true, 'aria-label': 'Add a channel' },
    h('div.channel-form-grid', h('div.field', h('label', { for: 'ch-kind' }, 'Kind'), kind),
      h('div.field', h('label', { for: 'ch-name' }, 'Name'), name), addressField, urlField),
    addError, h('div.form-foot', addBtn));
  const syncKind = () => {
    const email = kind.value === 'email';
    addressField.hidden = !email;
    urlField.hidden = email;
    urlHint.textContent = kind.value === 'slack'
      ? 'The incoming-webhook URL Slack gave you (https://hooks.slack.com/…).'
      : 'An https:// URL on a public address. Each request is signed (Lattice-Signature, HMAC-SHA256).';
  };
  kind.addEventListener('change', syncKind);
  syncKind();
  addForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    addError.hidden = true;
    for (const el of addForm.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    const body = { kind: kind.value, name: name.value.trim() };
    if (kind.value === 'email') body.address = address.value.trim(); else body.url = url.value.trim();
    addBtn.disabled = true;
    addBtn.setAttribute('aria-busy', 'true');
    try {
      const r = await post('/alerts/channels', body);
      const c = (r && r.channel) || {};
      name.value = ''; address.value = ''; url.value = '';
      if (r && r.secret) showSecret(reveal, `Webhook “${c.name}” added.`, r.secret);
      else if (c.kind === 'email' && !c.verified) fill(reveal, h('div.alert.alert-info', { role: 'status' }, h('strong', `“${c.name}” added.`), ' ', `We e-mailed a confirmation link to ${c.target}; nothing is sent there until it is followed.`));
      else fill(reveal, h('div.alert.alert-ok', { role: 'status' }, `“${c.name}” added.`));
      await loadChannels();
    } catch (err) {
      if (err.status === 401) throw err;
      addError.textContent = err.status === 429 ? tooManyText(err) : err.message;
      addError.hidden = false;
      const path = pathOf(err);
      const input = path && addForm.querySelector(`[data-path="${CSS.escape(path)}"]`);
      if (input && !input.closest('[hidden]')) { input.setAttribute('aria-invalid', 'true'); input.focus(); } else addError.focus();
    } finally {
      addBtn.disabled = false;
      addBtn.removeAttribute('aria-busy');
    }
  });

  fill(root, viewHead('Alerts'),
    h('p.muted.view-intro', 'Lattice opens an incident when a service goes down, errors or latency climb, the map changes or ingest is refused, and sends it to your channels. ',
      h('a', { href: '/docs#alerts' }, 'How alerts work')),
    h('section.panel', { 'aria-labelledby': 'inc-h' }, h('h2', { id: 'inc-h' }, 'Open incidents'), incidentsBox),
    h('section.panel', { 'aria-labelledby': 'hist-h' }, h('h2', { id: 'hist-h' }, 'History'), historyBox),
    h('section.panel', { 'aria-labelledby': 'chan-h' }, h('h2', { id: 'chan-h' }, 'Channels'), channelsBox,
      h('h3', 'Add a channel'), addForm, reveal),
    h('section.panel', { 'aria-labelledby': 'rules-h' }, h('h2', { id: 'rules-h' }, 'Rules'), rulesBox));
  await Promise.all([loadIncidents(), loadChannels(), loadRules()]);
  void ctx;
  return () => { gone = true; };
}
