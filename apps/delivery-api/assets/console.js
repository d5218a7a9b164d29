// orderflow Delivery console: the lists follow changes without reloading. The server sends the lists'
// HTML (escaped there) as a `lists` event whenever they change.
(() => {
  'use strict';
  const lists = document.getElementById('lists');
  if (!lists || !window.EventSource) {
    return;
  }
  const source = new EventSource(lists.dataset.live);
  source.addEventListener('lists', (event) => {
    lists.innerHTML = event.data;
  });
})();
