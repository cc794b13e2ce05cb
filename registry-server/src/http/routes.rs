//! The route table: every route we serve, with who may call it, whether it is audited,
//! and its documentation. The router, the access check and `/api/openapi.json` are all
//! built from this one table, so none of them can leave a route out.

use std::collections::HashMap;

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};

use super::AppState;
use crate::store::Scope;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Anyone: health, readiness, version.
    Public,
    /// The events socket: the token comes in its handshake (Prefect's protocol).
    Socket,
    /// A bearer token holding this scope.
    Token(Scope),
}

/// What a route does, for the audit log: every write is recorded; a read is recorded when
/// it returns secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
}

/// A route's documentation for OpenAPI.
#[derive(Debug, Clone, Default)]
pub(crate) struct Doc {
    pub(crate) summary: &'static str,
    /// Component name of the JSON body, if any.
    pub(crate) request: Option<&'static str>,
    /// The success status.
    pub(crate) status: u16,
    /// Component name of the success body (`Name[]` for a list), if any.
    pub(crate) response: Option<&'static str>,
    /// Query parameters: (name, JSON type, description).
    pub(crate) query: &'static [(&'static str, &'static str, &'static str)],
}

/// What the access check needs to know of a route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteMeta {
    pub(crate) access: Access,
    pub(crate) kind: Kind,
}

/// One route.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) meta: RouteMeta,
    /// Under Prefect's `X-PREFECT-API-VERSION` check.
    pub(crate) versioned: bool,
    pub(crate) tag: &'static str,
    pub(crate) doc: Doc,
    pub(crate) handler: MethodRouter<AppState>,
}

fn route<H, T>(method: Method, filter: MethodFilter, path: &'static str, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let kind = if method == Method::GET {
        Kind::Read
    } else {
        Kind::Write
    };
    let scope = if kind == Kind::Read {
        Scope::Read
    } else {
        Scope::Write
    };
    Route {
        method,
        path,
        meta: RouteMeta {
            access: Access::Token(scope),
            kind,
        },
        versioned: true,
        tag: "blocks",
        doc: Doc {
            status: 200,
            ..Doc::default()
        },
        handler: on(filter, handler),
    }
}

/// A GET route needing `read`.
pub(crate) fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(Method::GET, MethodFilter::GET, path, h)
}

/// A POST route needing `write` (use [`Route::reads`] for filters).
pub(crate) fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(Method::POST, MethodFilter::POST, path, h)
}

/// A PATCH route needing `write`.
pub(crate) fn patch<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(Method::PATCH, MethodFilter::PATCH, path, h)
}

/// A PUT route needing `write`.
pub(crate) fn put<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(Method::PUT, MethodFilter::PUT, path, h)
}

/// A DELETE route needing `write`.
pub(crate) fn delete<H: Handler<T, AppState>, T: 'static>(path: &'static str, h: H) -> Route {
    route(Method::DELETE, MethodFilter::DELETE, path, h)
}

impl Route {
    /// A read over POST (filters, counts): needs `read`, not audited as a write.
    pub(crate) fn reads(mut self) -> Self {
        self.meta = RouteMeta {
            access: Access::Token(Scope::Read),
            kind: Kind::Read,
        };
        self
    }

    /// Recorded in the audit log as a write, whatever scope it needs.
    pub(crate) fn audited(mut self) -> Self {
        self.meta.kind = Kind::Write;
        self
    }

    /// Needs `admin`.
    pub(crate) fn admin(mut self) -> Self {
        self.meta.access = Access::Token(Scope::Admin);
        self
    }

    /// Answers without a token.
    pub(crate) fn public(mut self) -> Self {
        self.meta.access = Access::Public;
        self
    }

    /// The events socket.
    pub(crate) fn socket(mut self) -> Self {
        self.meta.access = Access::Socket;
        self
    }

    /// Outside Prefect's API-version check.
    pub(crate) fn unversioned(mut self) -> Self {
        self.versioned = false;
        self
    }

    pub(crate) fn tag(mut self, tag: &'static str) -> Self {
        self.tag = tag;
        self
    }

    pub(crate) fn summary(mut self, summary: &'static str) -> Self {
        self.doc.summary = summary;
        self
    }

    pub(crate) fn body(mut self, component: &'static str) -> Self {
        self.doc.request = Some(component);
        self
    }

    pub(crate) fn returns(mut self, status: u16, component: Option<&'static str>) -> Self {
        self.doc.status = status;
        self.doc.response = component;
        self
    }

    pub(crate) fn query(
        mut self,
        params: &'static [(&'static str, &'static str, &'static str)],
    ) -> Self {
        self.doc.query = params;
        self
    }
}

/// `?include_secrets` as documented on the routes that take it.
pub(crate) const INCLUDE_SECRETS: &[(&str, &str, &str)] = &[(
    "include_secrets",
    "boolean",
    "Return secret values instead of `********` (needs the read-secrets scope).",
)];

/// The access rules by (method, path template).
pub(crate) type RouteTable = HashMap<(Method, &'static str), RouteMeta>;

pub(crate) fn table(routes: &[Route]) -> RouteTable {
    routes
        .iter()
        .map(|r| ((r.method.clone(), r.path), r.meta))
        .collect()
}

/// The access rule and kind of `method` on the route template `path`. HEAD is served by
/// the GET handler, so it takes GET's rule; any other method the path does not serve gets
/// the strictest rule among the path's routes (then the router answers 405), so no method
/// reaches a handler past a weaker check than its own.
pub(crate) fn rule(table: &RouteTable, method: &Method, path: &str) -> (Access, Kind) {
    let lookup = |m: &Method| table.get(&(m.clone(), path)).copied();
    let meta = lookup(method).or_else(|| {
        if method == Method::HEAD {
            lookup(&Method::GET)
        } else {
            None
        }
    });
    if let Some(meta) = meta {
        return (meta.access, meta.kind);
    }
    let strictest = table
        .iter()
        .filter(|((_, p), _)| *p == path)
        .filter_map(|(_, meta)| match meta.access {
            Access::Token(scope) => Some(scope),
            Access::Public | Access::Socket => None,
        })
        .max_by_key(|s| match s {
            Scope::Read => 0,
            Scope::ReadSecrets | Scope::Write => 1,
            Scope::Admin => 2,
        })
        .unwrap_or(Scope::Read);
    (Access::Token(strictest), Kind::Read)
}
