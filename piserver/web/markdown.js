// Markdown from the model, tools or a repository, rendered to sanitized DOM: marked turns it
// into HTML (raw HTML included), DOMPurify removes everything that could run or navigate
// away (event handlers, javascript: URLs, forms, frames, styles).

import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

const marked = new Marked({ gfm: true, breaks: false, async: false });

const SANITIZE = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "video",
    "audio", "source", "object", "embed"],
  FORBID_ATTR: ["style", "srcset", "action", "formaction"],
  ALLOW_DATA_ATTR: false,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// Replaces the children of `element` with the rendered `text`.
export function renderMarkdown(element, text) {
  const html = marked.parse(text);
  const fragment = DOMPurify.sanitize(html, { ...SANITIZE, RETURN_DOM_FRAGMENT: true });
  element.replaceChildren(fragment);
}
