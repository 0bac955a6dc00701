// The label-review page's script (clearpeft/study/review.py embeds it): plain JavaScript, no libraries, nothing
// fetched. It reads the report from the page's JSON block and keeps every column in a typed array, so that
// sorting and filtering 100,000 rows stay a loop over numbers; only the current page of rows is in the DOM.
(function () {
  'use strict';
  var started = performance.now();  // since navigation start: the HTML above is parsed by now
  var D = JSON.parse(document.getElementById('review-data').textContent);
  var parsed = performance.now();
  var N = D.index.length, L = D.labels, K = L.length;
  var NONE = -1, KEEP = -2, DROP = -3;  // a decision: one of these, or the id of the new label
  var sampleIndex = Int32Array.from(D.index), given = Int32Array.from(D.given), pred = Int32Array.from(D.predicted);
  var score = Float64Array.from(D.score), pval = Float64Array.from(D.p), flag = Uint8Array.from(D.flag);
  var text = D.text, lower = null;  // lower-cased texts, made on the first search
  var dec = new Int32Array(N).fill(NONE);
  var posOf = new Map();
  for (var i0 = 0; i0 < N; i0++) posOf.set(sampleIndex[i0], i0);
  var nameRank = new Int32Array(K);  // labels sort by name in the table
  L.map(function (n, k) { return [n.toLowerCase(), k]; })
    .sort(function (a, b) { return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0; })
    .forEach(function (e, r) { nameRank[e[1]] = r; });
  var state = {given: -1, pred: -1, flag: 'all', decision: 'all', search: '', sort: 'rank', dir: 1, page: 0, size: 100};
  var order = null, view = new Int32Array(N), viewLen = 0, lastBulk = null;
  var api = window.clearpeftReview = {ready: false, timings: [], rows: N};
  var storeKey = 'clearpeft-review:' + D.fingerprint;

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === 'text') e.textContent = attrs[k];  // text is set as text, never parsed as HTML
      else if (k === 'cls') e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c); });
    return e;
  }
  function $(id) { return document.getElementById(id); }
  function esc(s) {  // for the one piece of HTML built as a string (the matrix): label names are data
    return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
  }
  function timed(what, fn) {  // how long an action takes to its rendered table and to the next frame painted
    var t = performance.now();
    fn();
    var entry = {what: what, ms: performance.now() - t};
    api.timings.push(entry);  // benchmarks/review_load.py reads these
    requestAnimationFrame(function () { setTimeout(function () { entry.paintMs = performance.now() - t; }, 0); });
  }

  // ------------------------------------------------------------ sorting and filtering

  var keys = {
    rank: function (a, b) { return a - b; },
    index: function (a, b) { return sampleIndex[a] - sampleIndex[b]; },
    score: function (a, b) { return score[a] - score[b]; },
    p: function (a, b) { return pval[a] - pval[b]; },
    given: function (a, b) { return nameRank[given[a]] - nameRank[given[b]]; },
    predicted: function (a, b) { return nameRank[pred[a]] - nameRank[pred[b]]; },
    flag: function (a, b) { return flag[b] - flag[a]; },  // flagged first
    decision: function (a, b) { return decisionRank(dec[a]) - decisionRank(dec[b]); },
    text: function (a, b) { return lower[a] < lower[b] ? -1 : lower[a] > lower[b] ? 1 : 0; }
  };
  function decisionRank(c) { return c === DROP ? 0 : c >= 0 ? 1 : c === KEEP ? 2 : 3; }
  function lowerTexts() { if (!lower) lower = text.map(function (s) { return s.toLowerCase(); }); }

  function sortRows() {
    if (state.sort === 'text') lowerTexts();
    var cmp = keys[state.sort], dir = state.dir;
    order = new Int32Array(N);
    for (var i = 0; i < N; i++) order[i] = i;
    if (state.sort !== 'rank' || dir !== 1) {
      order.sort(function (a, b) { return dir * cmp(a, b) || a - b; });  // ties keep the report's order
    }
  }

  function filterRows() {
    var q = state.search.trim().toLowerCase();
    if (q) lowerTexts();
    var g = state.given, pr = state.pred, f = state.flag, d = state.decision, n = 0;
    for (var j = 0; j < N; j++) {
      var i = order[j];
      if (g >= 0 && given[i] !== g) continue;
      if (pr >= 0 && pred[i] !== pr) continue;
      if (f === 'flagged' ? !flag[i] : f === 'unflagged' ? flag[i] : false) continue;
      if (d !== 'all') {
        var c = dec[i];
        if (d === 'undecided' ? c !== NONE : d === 'decided' ? c === NONE : d === 'keep' ? c !== KEEP
            : d === 'drop' ? c !== DROP : c < 0) continue;
      }
      if (q && lower[i].indexOf(q) < 0) continue;
      view[n++] = i;
    }
    viewLen = n;
  }

  // ------------------------------------------------------------ the controls, the table, the pager

  function labelOptions(select, counts, allText) {
    select.appendChild(el('option', {value: '-1', text: allText}));
    L.forEach(function (name, k) {
      select.appendChild(el('option', {value: String(k), text: name + ' (' + counts[k] + ')'}));
    });
  }

  function build() {
    var app = $('app');
    var givenCounts = new Array(K).fill(0), predCounts = new Array(K).fill(0);
    for (var i = 0; i < N; i++) { givenCounts[given[i]]++; predCounts[pred[i]]++; }
    var fGiven = el('select', {id: 'f-given', title: 'only samples with this given label'});
    labelOptions(fGiven, givenCounts, 'any given label');
    var fPred = el('select', {id: 'f-pred', title: 'only samples with this predicted label'});
    labelOptions(fPred, predCounts, 'any predicted label');
    var fFlag = el('select', {id: 'f-flag'}, [el('option', {value: 'all', text: 'flagged or not'}),
      el('option', {value: 'flagged', text: 'flagged only'}), el('option', {value: 'unflagged', text: 'not flagged'})]);
    var fDec = el('select', {id: 'f-decision'}, ['all', 'undecided', 'decided', 'keep', 'relabel', 'drop'].map(function (v) {
      return el('option', {value: v, text: v === 'all' ? 'any decision' : v}); }));
    var fSearch = el('input', {id: 'f-search', type: 'search', placeholder: 'search the texts', size: '24'});
    app.appendChild(el('div', {cls: 'controls'}, [
      el('label', {}, ['Given ', fGiven]), el('label', {}, ['Predicted ', fPred]), el('label', {}, ['Flag ', fFlag]),
      el('label', {}, ['Decision ', fDec]), el('label', {}, ['Text ', fSearch]),
      el('button', {id: 'f-clear', type: 'button', text: 'Clear filters'})]));
    var load = el('input', {id: 'load-decisions', type: 'file', accept: '.json,application/json'});
    app.appendChild(el('div', {cls: 'actions'}, [
      el('button', {id: 'bulk-accept', type: 'button', title: 'relabel every flagged row of the current filter ' +
        '(all pages) that has no decision yet to its predicted label'}),
      el('button', {id: 'bulk-undo', type: 'button', text: 'Undo', disabled: 'disabled'}),
      el('button', {id: 'clear-decisions', type: 'button', text: 'Clear decisions'}),
      el('span', {cls: 'spacer'}),
      el('button', {id: 'dl-csv', type: 'button', cls: 'primary', text: 'Download corrected CSV',
        title: 'text,label of every training sample after your decisions; dropped rows left out'}),
      el('button', {id: 'dl-decisions', type: 'button', text: 'Download decisions',
        title: 'a file to load later and go on with this review'}),
      el('label', {cls: 'file'}, ['Load decisions ', load])]));
    app.appendChild(el('p', {id: 'status', cls: 'status'}));
    app.appendChild(el('p', {id: 'message', cls: 'message', role: 'status'}));
    var heads = [['rank', '#', 'position in the report (most suspicious first)'],
      ['score', 'score', "the final model's probability of the given label"], ['given', 'given', 'the label in the data'],
      ['predicted', 'predicted', "the final model's most probable label"],
      ['p', 'p', 'clean probability (2-component GMM on the losses)'],
      ['flag', 'flag', 'p < 0.5 or confident learning finds another label'],
      ['text', 'text', ''], ['decision', 'decision', 'keep, relabel or drop']];
    var tr = el('tr');
    heads.forEach(function (h) {
      tr.appendChild(el('th', {'data-sort': h[0], title: h[2] ? h[2] + ' (click to sort)' : 'click to sort',
        cls: 'col-' + h[0]}, [h[1]]));
    });
    app.appendChild(el('table', {id: 'table'}, [el('thead', {}, [tr]), el('tbody', {id: 'rows'})]));
    var size = el('select', {id: 'page-size'}, [50, 100, 250, 1000].map(function (v) {
      var o = el('option', {value: String(v), text: String(v)}); if (v === state.size) o.selected = true; return o; }));
    app.appendChild(el('div', {cls: 'pager'}, [el('button', {id: 'prev', type: 'button', text: '‹ previous'}),
      el('span', {id: 'page-info'}), el('button', {id: 'next', type: 'button', text: 'next ›'}),
      el('label', {}, [' rows per page ', size])]));

    function refilter(what) { timed(what, function () { state.page = 0; filterRows(); render(); }); }
    fGiven.addEventListener('change', function () { state.given = +fGiven.value; refilter('filter given'); });
    fPred.addEventListener('change', function () { state.pred = +fPred.value; refilter('filter predicted'); });
    fFlag.addEventListener('change', function () { state.flag = fFlag.value; refilter('filter flag'); });
    fDec.addEventListener('change', function () { state.decision = fDec.value; refilter('filter decision'); });
    fSearch.addEventListener('input', function () { state.search = fSearch.value; refilter('search'); });
    $('f-clear').addEventListener('click', function () { setFilters(-1, -1, 'all'); state.decision = 'all'; fDec.value = 'all';
      state.search = ''; fSearch.value = ''; refilter('clear filters'); });
    tr.addEventListener('click', function (ev) {
      var th = ev.target.closest('th'); if (!th) return;
      var key = th.getAttribute('data-sort');
      timed('sort ' + key, function () {
        state.dir = state.sort === key ? -state.dir : 1; state.sort = key;
        sortRows(); state.page = 0; filterRows(); render();
      });
    });
    $('prev').addEventListener('click', function () { if (state.page > 0) { state.page--; render(); } });
    $('next').addEventListener('click', function () {
      if ((state.page + 1) * state.size < viewLen) { state.page++; render(); }
    });
    size.addEventListener('change', function () { state.size = +size.value; state.page = 0; render(); });
    ['mousedown', 'focusin', 'keydown', 'touchstart'].forEach(function (type) {
      $('rows').addEventListener(type, function (ev) {
        var sel = ev.target.closest && ev.target.closest('select.relabel');
        if (sel) fillRelabel(sel);
      });
    });
    $('rows').addEventListener('click', onRowClick);
    $('rows').addEventListener('change', onRowChange);
    $('bulk-accept').addEventListener('click', bulkAccept);
    $('bulk-undo').addEventListener('click', undoBulk);
    $('dl-csv').addEventListener('click', downloadCsv);
    $('dl-decisions').addEventListener('click', downloadDecisions);
    $('clear-decisions').addEventListener('click', function () {
      if (countDecisions().total && window.confirm('Clear all ' + countDecisions().total + ' decisions?')) {
        dec.fill(NONE); lastBulk = null; save(); render(); say('all decisions cleared');
      }
    });
    load.addEventListener('change', function () { if (load.files.length) loadDecisions(load.files[0]); load.value = ''; });
  }

  function setFilters(g, p, f) {
    state.given = g; state.pred = p; state.flag = f;
    $('f-given').value = String(g); $('f-pred').value = String(p); $('f-flag').value = f;
  }

  function decisionText(c) { return c === KEEP ? 'keep' : c === DROP ? 'drop' : c >= 0 ? '→ ' + L[c] : ''; }
  function rowClass(i) {
    var c = dec[i];
    return (flag[i] ? 'flagged' : '') + (c === KEEP ? ' d-keep' : c === DROP ? ' d-drop' : c >= 0 ? ' d-relabel' : '');
  }

  function decisionCell(i) {
    var td = el('td', {cls: 'decision'});
    var c = dec[i];
    td.appendChild(el('button', {type: 'button', 'data-act': 'keep', cls: c === KEEP ? 'on' : '',
      title: 'the given label is right', text: 'keep'}));
    if (pred[i] !== given[i]) {
      td.appendChild(el('button', {type: 'button', 'data-act': 'accept', cls: c === pred[i] ? 'on' : '',
        title: 'relabel to the predicted label', text: '→ ' + L[pred[i]]}));
    }
    td.appendChild(el('button', {type: 'button', 'data-act': 'drop', cls: c === DROP ? 'on' : '',
      title: 'leave the sample out', text: 'drop'}));
    // Only the chosen label is an option until the select is used (fillRelabel): a page of 100 rows with
    // every label as an option is 100·K elements, which made rendering with 77 labels several times slower.
    var sel = el('select', {cls: 'relabel', title: 'relabel to any label'}, [el('option', {value: '', text: 'relabel…'})]);
    if (c >= 0) sel.appendChild(el('option', {value: String(c), text: L[c], selected: 'selected'}));
    td.appendChild(sel);
    return td;
  }

  function fillRelabel(sel) {
    if (sel.getAttribute('data-filled')) return;
    var i = +sel.closest('tr').getAttribute('data-pos'), c = dec[i];
    sel.textContent = '';
    sel.appendChild(el('option', {value: '', text: 'relabel…'}));
    L.forEach(function (name, k) {
      if (k === given[i]) return;
      var o = el('option', {value: String(k), text: name + (k === pred[i] ? ' (predicted)' : '')});
      if (c === k) o.selected = true;
      sel.appendChild(o);
    });
    sel.setAttribute('data-filled', '1');
  }

  function rowElement(i) {
    var tr = el('tr', {'data-pos': String(i), 'data-index': String(sampleIndex[i]), cls: rowClass(i)});
    tr.appendChild(el('td', {cls: 'num', text: String(i + 1)}));
    tr.appendChild(el('td', {cls: 'num', text: score[i].toFixed(3)}));
    tr.appendChild(el('td', {cls: 'given', text: L[given[i]]}));
    tr.appendChild(el('td', {cls: pred[i] !== given[i] ? 'predicted differs' : 'predicted', text: L[pred[i]]}));
    tr.appendChild(el('td', {cls: 'num', text: pval[i].toFixed(3)}));
    tr.appendChild(el('td', {cls: 'flag', text: flag[i] ? '⚑' : '', title: flag[i] ? 'flagged' : ''}));
    tr.appendChild(el('td', {cls: 'text', text: text[i]}));
    tr.appendChild(decisionCell(i));
    return tr;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(viewLen / state.size));
    if (state.page >= pages) state.page = pages - 1;
    var body = $('rows'), frag = document.createDocumentFragment();
    var start = state.page * state.size, end = Math.min(viewLen, start + state.size);
    for (var j = start; j < end; j++) frag.appendChild(rowElement(view[j]));
    body.textContent = '';
    body.appendChild(frag);
    if (!viewLen) {
      body.appendChild(el('tr', {}, [el('td', {colspan: '8', cls: 'none', text: 'no sample matches these filters'})]));
    }
    $('page-info').textContent = viewLen ? ' rows ' + (start + 1).toLocaleString() + '–' + end.toLocaleString() +
      ' of ' + viewLen.toLocaleString() + ' (page ' + (state.page + 1) + ' of ' + pages + ') ' : ' no rows ';
    $('prev').disabled = state.page === 0;
    $('next').disabled = end >= viewLen;
    document.querySelectorAll('#table th').forEach(function (th) {
      var key = th.getAttribute('data-sort');
      th.setAttribute('data-dir', key === state.sort ? (state.dir > 0 ? 'asc' : 'desc') : '');
    });
    status();
  }

  function countDecisions() {
    var c = {keep: 0, relabel: 0, drop: 0, total: 0};
    for (var i = 0; i < N; i++) {
      var d = dec[i];
      if (d === NONE) continue;
      c.total++;
      if (d === KEEP) c.keep++; else if (d === DROP) c.drop++; else c.relabel++;
    }
    return c;
  }

  function bulkCandidates() {
    var out = [];
    for (var j = 0; j < viewLen; j++) {
      var i = view[j];
      if (flag[i] && pred[i] !== given[i] && dec[i] === NONE) out.push(i);
    }
    return out;
  }

  function status() {
    var flagged = 0;
    for (var j = 0; j < viewLen; j++) flagged += flag[view[j]];
    var c = countDecisions();
    $('status').textContent = viewLen.toLocaleString() + ' of ' + N.toLocaleString() + ' samples shown, ' +
      flagged.toLocaleString() + ' of them flagged. Decisions: ' + c.keep + ' keep, ' + c.relabel + ' relabel, ' +
      c.drop + ' drop; the corrected CSV will have ' + (N - c.drop).toLocaleString() + ' rows.';
    var n = bulkCandidates().length;
    var bulk = $('bulk-accept');
    bulk.textContent = 'Accept the predicted label for every flagged row shown (' + n.toLocaleString() + ' undecided)';
    bulk.disabled = n === 0;
    $('bulk-undo').disabled = !lastBulk;
  }

  function say(message, error) {
    var m = $('message');
    m.textContent = message;
    m.className = 'message' + (error ? ' error' : '');
  }

  // ------------------------------------------------------------ decisions

  function decide(i, c) {
    dec[i] = c;
    var tr = document.querySelector('#rows tr[data-pos="' + i + '"]');
    if (tr) tr.parentNode.replaceChild(rowElement(i), tr);
    lastBulk = null;
    save();
    status();
  }

  function onRowClick(ev) {
    var b = ev.target.closest('button[data-act]');
    if (!b) return;
    var i = +b.closest('tr').getAttribute('data-pos'), act = b.getAttribute('data-act');
    var c = act === 'keep' ? KEEP : act === 'drop' ? DROP : pred[i];
    decide(i, dec[i] === c ? NONE : c);  // a second click takes the decision back
  }

  function onRowChange(ev) {
    var s = ev.target.closest('select.relabel');
    if (!s) return;
    var i = +s.closest('tr').getAttribute('data-pos');
    if (s.value !== '') decide(i, +s.value);
    else if (dec[i] >= 0) decide(i, NONE);  // back to "relabel…": the relabel is taken back
  }

  function bulkAccept() {
    var rows = bulkCandidates();
    rows.forEach(function (i) { dec[i] = pred[i]; });
    lastBulk = rows.length ? rows : null;
    save();
    render();
    say(rows.length + ' rows relabelled to their predicted label (Undo takes it back)');
  }

  function undoBulk() {
    if (!lastBulk) return;
    lastBulk.forEach(function (i) { dec[i] = NONE; });
    say(lastBulk.length + ' bulk relabels undone');
    lastBulk = null;
    save();
    render();
  }

  function decisionList() {
    var out = [];
    for (var i = 0; i < N; i++) {
      var c = dec[i];
      if (c === NONE) continue;
      var d = {index: sampleIndex[i], action: c === KEEP ? 'keep' : c === DROP ? 'drop' : 'relabel'};
      if (c >= 0) d.label = L[c];
      out.push(d);
    }
    return out.sort(function (a, b) { return a.index - b.index; });
  }

  function applyDecisions(list) {  // [{index, action, label}] -> how many applied and skipped
    var applied = 0, skipped = 0;
    var labelId = new Map(L.map(function (n, k) { return [n, k]; }));
    list.forEach(function (d) {
      var i = d ? posOf.get(d.index) : undefined;
      var c = !d ? undefined : d.action === 'keep' ? KEEP : d.action === 'drop' ? DROP
        : d.action === 'relabel' ? labelId.get(d.label) : undefined;
      if (i === undefined || c === undefined) { skipped++; return; }
      dec[i] = c === given[i] ? KEEP : c;  // relabelled to its own label: kept
      applied++;
    });
    return {applied: applied, skipped: skipped};
  }

  // The browser's copy of the decisions, for a reload: [sample index, decision] pairs, flat (100,000 decisions
  // stay near 1 MB, within the storage a page gets). The decisions file is the record; this is a convenience.
  function save() {
    var flat = [];
    for (var i = 0; i < N; i++) if (dec[i] !== NONE) flat.push(sampleIndex[i], dec[i]);
    try {
      if (flat.length) window.localStorage.setItem(storeKey, JSON.stringify({labels: L, d: flat}));
      else window.localStorage.removeItem(storeKey);
    } catch (e) {  // storage off or full: an older copy must not come back on the next visit
      try { window.localStorage.removeItem(storeKey); } catch (e2) { /* no storage at all */ }
    }
  }

  function restore() {
    var saved = null;
    try { saved = JSON.parse(window.localStorage.getItem(storeKey) || 'null'); } catch (e) { saved = null; }
    if (!saved || !Array.isArray(saved.d) || JSON.stringify(saved.labels) !== JSON.stringify(L)) return;
    var restored = 0;
    for (var j = 0; j + 1 < saved.d.length; j += 2) {
      var i = posOf.get(saved.d[j]), c = saved.d[j + 1];
      if (i === undefined || !(c === KEEP || c === DROP || (c >= 0 && c < K && c !== given[i]))) continue;
      dec[i] = c;
      restored++;
    }
    if (restored) {
      say('restored ' + restored + ' decisions this browser kept from an earlier visit (Clear decisions to start over)');
    }
  }

  function loadDecisions(file) {
    var reader = new FileReader();
    reader.onload = function () {
      var data;
      try { data = JSON.parse(reader.result); } catch (e) { say(file.name + ' is not JSON: not loaded', true); return; }
      if (!data || data.format !== D.format || !Array.isArray(data.decisions)) {
        say(file.name + ' is not a decisions file of a clearpeft review: not loaded', true); return;
      }
      if (data.fingerprint !== D.fingerprint) {
        say(file.name + ' was made on other training data (' + (data.samples || '?') + ' samples of ' +
          (data.name || '?') + '): not loaded', true); return;
      }
      dec.fill(NONE);
      var r = applyDecisions(data.decisions);
      lastBulk = null;
      save();
      filterRows();
      render();
      say('loaded ' + r.applied + ' decisions from ' + file.name +
        (r.skipped ? ', skipped ' + r.skipped + ' unknown' : ''), r.skipped > 0);
    };
    reader.readAsText(file);
  }

  // ------------------------------------------------------------ downloads, made here in the browser

  function download(content, type, name) {
    var url = URL.createObjectURL(new Blob([content], {type: type}));
    var a = el('a', {href: url, download: name});
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  }

  function csvField(s) { return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }

  function downloadCsv() {
    var byIndex = new Int32Array(N);
    for (var i = 0; i < N; i++) byIndex[i] = i;
    byIndex.sort(function (a, b) { return sampleIndex[a] - sampleIndex[b]; });  // the data set's own order
    var out = ['text,label'];
    for (var j = 0; j < N; j++) {
      var r = byIndex[j], c = dec[r];
      if (c === DROP) continue;
      out.push(csvField(text[r]) + ',' + csvField(L[c >= 0 ? c : given[r]]));
    }
    download(out.join('\n') + '\n', 'text/csv;charset=utf-8', D.name + '-corrected.csv');
    say('corrected CSV: ' + (out.length - 1).toLocaleString() + ' rows');
  }

  function downloadDecisions() {
    var data = {format: D.format, version: 1, name: D.name, fingerprint: D.fingerprint, samples: N, labels: L,
      decisions: decisionList()};
    download(JSON.stringify(data, null, 1) + '\n', 'application/json', D.name + '-decisions.json');
    say(data.decisions.length + ' decisions downloaded');
  }

  // ------------------------------------------------------------ the matrix of flagged samples

  function matrixCounts() {
    var counts = new Int32Array(K * K), rowTotal = new Int32Array(K), max = 0;
    for (var i = 0; i < N; i++) {
      if (!flag[i]) continue;
      var c = ++counts[given[i] * K + pred[i]];
      rowTotal[given[i]]++;
      if (c > max) max = c;
    }
    return {counts: counts, rowTotal: rowTotal, max: max};
  }

  function heat(n, max) { return 'rgba(200, 50, 40, ' + (0.08 + 0.82 * Math.sqrt(n / max)).toFixed(3) + ')'; }

  function showCell(g, p) {  // a matrix cell (p: -1 for a row's label) filters the table to its flagged samples
    timed('matrix cell', function () { setFilters(g, p, 'flagged'); state.page = 0; filterRows(); render(); });
    $('review').scrollIntoView({block: 'start'});
  }

  function buildMatrix() {
    var m = matrixCounts();
    if (K > 12) { buildHeatCanvas(m); return; }
    var h = ['<thead><tr><th class="corner">given ↓  predicted →</th>'];
    L.forEach(function (name) { h.push('<th class="col">' + esc(name) + '</th>'); });
    h.push('<th>flagged</th></tr></thead><tbody>');
    for (var g = 0; g < K; g++) {
      h.push('<tr><th class="row" data-g="' + g + '" title="show the flagged samples labelled ' + esc(L[g]) + '">' +
        esc(L[g]) + '</th>');
      for (var p = 0; p < K; p++) {
        var n = m.counts[g * K + p], diag = g === p ? ' diag' : '';
        if (!n) { h.push(diag ? '<td class="diag"></td>' : '<td></td>'); continue; }
        h.push('<td class="cell' + diag + (n / m.max > 0.45 ? ' dark' : '') + '" data-g="' + g + '" data-p="' + p +
          '" title="' + n + ' flagged: given ' + esc(L[g]) + ', predicted ' + esc(L[p]) +
          '" style="background: ' + heat(n, m.max) + '">' + n + '</td>');
      }
      h.push('<td class="total">' + m.rowTotal[g] + '</td></tr>');
    }
    h.push('</tbody>');
    var table = el('table', {id: 'matrix-table'});
    table.innerHTML = h.join('');
    table.addEventListener('click', function (ev) {
      var t = ev.target.closest('[data-g]');
      if (!t) return;
      document.querySelectorAll('#matrix-table .selected').forEach(function (e) { e.classList.remove('selected'); });
      t.classList.add('selected');
      showCell(+t.getAttribute('data-g'), t.hasAttribute('data-p') ? +t.getAttribute('data-p') : -1);
    });
    $('matrix').appendChild(table);
  }

  // Many labels: the matrix is drawn on a canvas, cells by colour, counts and names in the tooltip. As a
  // table, 77 labels made 5,929 cells, whose layout and paint took longer than the rest of the page.
  function buildHeatCanvas(m) {
    var cell = Math.max(12, Math.min(26, Math.floor(1000 / K))), left = 190, top = 34;
    var width = left + cell * K + 8, height = top + cell * K + 8, ratio = window.devicePixelRatio || 1;
    var canvas = el('canvas', {id: 'matrix-canvas', width: String(Math.round(width * ratio)),
      height: String(Math.round(height * ratio)), 'data-left': String(left), 'data-top': String(top),
      'data-cell': String(cell), role: 'img',
      'aria-label': 'flagged samples by given label (rows) and predicted label (columns); the Given and Predicted ' +
        'filters below do the same'});
    canvas.style.width = width + 'px';
    canvas.style.height = height + 'px';
    var ctx = canvas.getContext('2d');
    ctx.scale(ratio, ratio);
    ctx.font = '10px system-ui, sans-serif';
    ctx.fillStyle = '#5d6773';
    ctx.fillText('given ↓  predicted →', 4, 12);
    ctx.textAlign = 'center';
    for (var p = 0; p < K; p++) {
      if (cell >= 16 || p % 2 === 0) ctx.fillText(String(p), left + (p + 0.5) * cell, top - 6);
    }
    ctx.textAlign = 'left';
    for (var g = 0; g < K; g++) {
      var y = top + g * cell;
      ctx.fillStyle = '#1d232b';
      var name = g + ' ' + L[g];
      ctx.fillText(name.length > 30 ? name.slice(0, 29) + '…' : name, 4, y + cell / 2 + 3.5);
      for (var q = 0; q < K; q++) {
        var n = m.counts[g * K + q], x = left + q * cell;
        ctx.fillStyle = n ? heat(n, m.max) : (g === q ? '#eceff2' : '#f8f9fa');
        ctx.fillRect(x, y, cell - 1, cell - 1);
        if (n && cell >= 20) {
          ctx.fillStyle = n / m.max > 0.45 ? '#fff' : '#1d232b';
          ctx.textAlign = 'center';
          ctx.fillText(String(n), x + cell / 2, y + cell / 2 + 3.5);
          ctx.textAlign = 'left';
        }
      }
    }
    function at(ev) {
      var box = canvas.getBoundingClientRect(), x = ev.clientX - box.left, y = ev.clientY - box.top;
      var g = Math.floor((y - top) / cell), p = x < left ? -1 : Math.floor((x - left) / cell);
      return g >= 0 && g < K && p < K ? {g: g, p: p} : null;
    }
    canvas.addEventListener('mousemove', function (ev) {
      var c = at(ev);
      canvas.title = !c ? '' : c.p < 0 ? m.rowTotal[c.g] + ' flagged with the given label ' + L[c.g] + ' (click)'
        : m.counts[c.g * K + c.p] + ' flagged: given ' + L[c.g] + ', predicted ' + L[c.p] + ' (click)';
    });
    canvas.addEventListener('click', function (ev) { var c = at(ev); if (c) showCell(c.g, c.p); });
    $('matrix').appendChild(canvas);
  }

  // ------------------------------------------------------------ start

  build();
  var controls = performance.now();
  buildMatrix();
  var matrix = performance.now();
  restore();
  sortRows();
  filterRows();
  render();
  api.ready = true;
  api.readyMs = performance.now();  // since navigation start: HTML, JSON, matrix and first table page
  api.phases = {html: started, json: parsed - started, controls: controls - parsed, matrix: matrix - controls,
    table: api.readyMs - matrix};
  requestAnimationFrame(function () { setTimeout(function () { api.paintedMs = performance.now(); }, 0); });
  api.state = state;
  document.body.setAttribute('data-ready', '1');
}());
