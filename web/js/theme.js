// Loaded as a classic script in <head>, before the first paint: applies the remembered theme
// (or the system's) so the page never flashes the wrong colours.
(function () {
  var theme = null;
  try { theme = JSON.parse(localStorage.getItem('aiot.theme')); } catch (e) { /* none */ }
  if (theme !== 'dark' && theme !== 'light') {
    theme = window.matchMedia && window.matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
  }
  document.documentElement.setAttribute('data-theme', theme);
})();
