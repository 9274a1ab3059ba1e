// The pages' only script (the Content-Security-Policy, script-src 'self', refuses inline ones):
// the slice viewer of the study page, the review buttons and the admin buttons. Every POST carries the session's
// CSRF token (from <meta name="csrf-token">) in X-CSRF-Token.
'use strict';
const csrf = document.querySelector('meta[name="csrf-token"]')?.content || '';
const post = (url, body) => fetch(url, {
  method: 'POST', credentials: 'same-origin',
  headers: body === undefined ? {'X-CSRF-Token': csrf} : {'X-CSRF-Token': csrf, 'Content-Type': 'application/json'},
  body: body === undefined ? undefined : JSON.stringify(body)})
  .then(r => r.json().then(body => r.ok ? body : Promise.reject(new Error(body.detail || r.statusText))));

for (const v of document.querySelectorAll('.viewer')) {
  const job = v.dataset.job, img = v.querySelector('.image'), range = v.querySelector('.slice');
  const preset = v.querySelector('.preset'), overlay = v.querySelector('.overlay');
  let n = 1;
  const show = () => {
    v.querySelector('.index').textContent = Number(range.value) + 1;
    img.src = `/api/jobs/${job}/slices/${range.value}.png?preset=${preset.value}&overlay=${overlay.checked}`;
  };
  const step = d => { range.value = Math.min(n - 1, Math.max(0, Number(range.value) + d)); show(); };
  fetch(`/api/jobs/${job}/viewer`).then(r => r.json()).then(info => {
    n = info.n_slices; range.max = n - 1; range.value = Math.floor(n / 2);
    v.querySelector('.count').textContent = n; show();
  });
  range.addEventListener('input', show); preset.addEventListener('change', show); overlay.addEventListener('change', show);
  v.querySelector('.prev').onclick = () => step(-1); v.querySelector('.next').onclick = () => step(1);
  img.addEventListener('wheel', e => { e.preventDefault(); step(e.deltaY > 0 ? 1 : -1); });
}

const failed = b => e => { b.textContent = `failed: ${e.message}`; };
for (const b of document.querySelectorAll('.rerun')) b.onclick = () =>
  post(`/api/jobs/${b.dataset.job}/rerun`).then(j => { b.textContent = `queued job ${j.job_id}`; }, failed(b));
for (const b of document.querySelectorAll('.resend')) b.onclick = () =>
  post(`/api/deliveries/${b.dataset.delivery}/resend`).then(() => { b.textContent = 'due again'; }, failed(b));
for (const b of document.querySelectorAll('.do-check')) b.onclick = () =>
  post(`/api/destinations/${encodeURIComponent(b.dataset.name)}/check`).then(c => {
    for (const cell of document.querySelectorAll('.check')) if (cell.dataset.name === b.dataset.name)
      cell.textContent = `${c.at}: ${c.ok === 'yes' ? 'ok' : 'failed'} — ${c.detail}`;
  }, failed(b));
for (const panel of document.querySelectorAll('.review-panel')) {
  const decide = decision => {
    const out = panel.querySelector('.review-outcome');
    post(`/api/jobs/${panel.dataset.job}/review`, {decision, comment: panel.querySelector('.review-comment').value})
      .then(j => { out.textContent = `${decision}d: ${j.status}`; window.location.reload(); },
            e => { out.textContent = `failed: ${e.message}`; });
  };
  const approve = panel.querySelector('.approve'), reject = panel.querySelector('.reject');
  if (approve) approve.onclick = () => decide('approve');
  if (reject) reject.onclick = () => decide('reject');
}
