// Sorting: each .wrap holds the column metadata (data-columns) of its table: numeric or text, and
// which direction is better. The first click sorts a column best-first; a second click reverses it.
(function(){
  function value(td, numeric){
    var text = (td.textContent || '').trim();
    if(!numeric){ return text.toLowerCase(); }
    var v = parseFloat(text.replace('\u2212', '-'));
    return isNaN(v) ? null : v;
  }
  document.querySelectorAll('.wrap[data-columns]').forEach(function(wrap){
    var table = wrap.querySelector('table');
    var meta = JSON.parse(wrap.getAttribute('data-columns'));
    var heads = table.querySelectorAll('thead th');
    heads.forEach(function(th, col){
      var m = meta[col] || {key: '', numeric: false, better: 'none', description: ''};
      th.setAttribute('data-key', m.key);
      if(m.description){ th.title = m.description; }
      th.addEventListener('click', function(){
        var asc = th.classList.contains('sorted-asc') ? false :
                  th.classList.contains('sorted-desc') ? true :
                  (m.better === 'low' || !m.numeric || m.better === 'none');
        heads.forEach(function(h){ h.classList.remove('sorted-asc', 'sorted-desc'); });
        th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = value(a.cells[col], m.numeric), y = value(b.cells[col], m.numeric);
          if(x === null && y === null){ return 0; } if(x === null){ return 1; } if(y === null){ return -1; }
          var r = x < y ? -1 : x > y ? 1 : 0;
          return asc ? r : -r;
        });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });
})();
