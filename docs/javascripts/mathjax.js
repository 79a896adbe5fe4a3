// MathJax 3's configuration for the whole site; mkdocs.yml loads this file on every page, then
// MathJax itself (extra_javascript), so each page loads one MathJax, configured here.
//
// The site has math of two kinds, and MathJax typesets exactly these elements (startup.elements):
// - Markdown pages (guide, API): pymdownx.arithmatex (generic mode) wraps inline math in
//   <span class="arithmatex">\(...\)</span> and display math in <div class="arithmatex">\[...\]</div>;
// - notebook pages (mkdocs-jupyter, through nbconvert): the Markdown cells' math stays in the
//   text as written, $...$ and $$...$$, inside <div class="jp-RenderedMarkdown">
//   (jp-RenderedLatex: text/latex outputs). nbconvert's own MathJax 2 loader, which
//   mkdocs-jupyter emits with an empty URL, is taken out of those pages by
//   docs/hooks/notebooks.py.
// A "$" elsewhere (prose, navigation, code) is left alone. tests/test_docs.py reads the object
// below as JSON and checks every built page against it: keep it JSON (quoted keys, no comments).
window.MathJax = {
  "tex": {
    "inlineMath": [["\\(", "\\)"], ["$", "$"]],
    "displayMath": [["\\[", "\\]"], ["$$", "$$"]],
    "processEscapes": true,
    "processEnvironments": true
  },
  "startup": {
    "elements": [".arithmatex", ".jp-RenderedMarkdown", ".jp-RenderedLatex"]
  }
};
