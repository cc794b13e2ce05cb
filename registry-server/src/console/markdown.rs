//! Markdown of type descriptions, rendered safely: raw HTML is shown as text, links keep
//! only `http`, `https` and `mailto` targets (and open nothing by themselves), and images
//! become links, so a description loads nothing from elsewhere.

use maud::{Markup, PreEscaped};
use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};

/// Longest description rendered (bytes); the rest is cut.
const MAX_MARKDOWN_BYTES: usize = 64 * 1024;

fn safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://") || lower.starts_with("mailto:")
}

/// A link's target when it is safe, else none (the link leads nowhere).
fn safe_dest(url: CowStr<'_>) -> CowStr<'_> {
    if safe_url(&url) {
        url
    } else {
        CowStr::Borrowed("")
    }
}

/// `text` as HTML.
pub(crate) fn render(text: &str) -> Markup {
    let mut cut = text.len().min(MAX_MARKDOWN_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let parser = Parser::new_ext(
        &text[..cut],
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH,
    );
    let events = parser.map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_dest(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            dest_url,
            title,
            id,
            ..
        }) => Event::Start(Tag::Link {
            link_type: LinkType::Inline,
            dest_url: safe_dest(dest_url),
            title,
            id,
        }),
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    });
    let mut out = String::with_capacity(cut + cut / 4);
    pulldown_cmark::html::push_html(&mut out, events);
    // Every link leaves without telling where it came from and cannot reach back.
    let out = out.replace("<a href=", "<a rel=\"noopener noreferrer\" href=");
    PreEscaped(out)
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn markup_and_script_urls_render_inert() {
        let html = render(
            "Hi <script>alert(1)</script> <img src=x onerror=alert(2)> [a](javascript:alert(3)) ![i](https://example.com/x.png) **bold**",
        )
        .into_string();
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("<strong>bold</strong>"), "{html}");
        assert!(
            html.contains("rel=\"noopener noreferrer\" href=\"https://example.com/x.png\""),
            "{html}"
        );
    }
}
