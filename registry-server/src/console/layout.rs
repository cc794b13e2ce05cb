//! The frame around every page: head, navigation, who is signed in, sign-out.

use maud::{DOCTYPE, Markup, html};

use super::Viewer;
use super::session::{FORM_TOKEN_FIELD, scopes_text};

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Nav {
    #[default]
    None,
    Dashboard,
    Blocks,
    Catalog,
    /// The admin pages (tokens, audit log, keys, settings); shown to admin sessions only.
    Admin,
}

/// A page's title and place.
#[derive(Debug, Clone, Default)]
pub(crate) struct Page {
    pub(crate) title: String,
    pub(crate) nav: Nav,
}

impl Page {
    pub(crate) fn titled(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            nav: Nav::None,
        }
    }

    pub(crate) fn in_nav(mut self, nav: Nav) -> Self {
        self.nav = nav;
        self
    }
}

/// The hidden form-token field every form of a signed-in page carries.
pub(crate) fn form_token(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name=(FORM_TOKEN_FIELD) value=(viewer.form_token()); }
}

/// The whole page.
pub(crate) fn shell(page: &Page, viewer: Option<&Viewer>, body: &Markup) -> Markup {
    let current = |nav: Nav| (page.nav == nav).then_some("page");
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (page.title) " · blocks" }
                link rel="stylesheet" href="/assets/console.css";
                link rel="icon" href="/assets/icons/blocks.svg" type="image/svg+xml";
                script type="module" src="/assets/console.js" {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" {
                        img src="/assets/icons/blocks.svg" alt="" width="24" height="24";
                        span { "blocks" }
                    }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Main" {
                            a href="/" aria-current=[current(Nav::Dashboard)] { "Dashboard" }
                            a href="/blocks" aria-current=[current(Nav::Blocks)] { "Blocks" }
                            a href="/catalog" aria-current=[current(Nav::Catalog)] { "Catalog" }
                            @if viewer.may(crate::store::Scope::Admin) {
                                a href="/admin/tokens" aria-current=[current(Nav::Admin)] { "Admin" }
                            }
                        }
                        div.who {
                            span.token title=(format!("token id {}", viewer.token.id)) {
                                (viewer.token.name)
                            }
                            span.scopes { (scopes_text(&viewer.token)) }
                            form method="post" action="/sign-out" {
                                (form_token(viewer))
                                button.link type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}
