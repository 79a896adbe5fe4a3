// Typeset the math of the guide and API pages (arithmatex blocks) with MathJax 3, loaded only
// where there is such math: notebook pages bring their own MathJax (nbconvert's).
(function () {
  if (!document.querySelector(".arithmatex")) return;
  window.MathJax = {
    tex: {
      inlineMath: [["\\(", "\\)"]],
      displayMath: [["\\[", "\\]"]],
      processEscapes: true,
      processEnvironments: true,
    },
    options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
  };
  var script = document.createElement("script");
  script.src = "https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js";
  script.async = true;
  document.head.appendChild(script);
})();
