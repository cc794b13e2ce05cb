//! The form's HTML, generated from the widget model only. Every text is escaped by maud;
//! one newline after each field keeps the output reviewable.

use maud::{Markup, html};

use super::model::{Node, Opt, Row, Widget, field_id};
use super::schema::{JsonKind, TextKind};

/// All fields, one after another.
pub(super) fn fields(nodes: &[Node]) -> Markup {
    html! {
        @for node in nodes { (field(node)) "\n" }
    }
}

fn label_text(node: &Node) -> Markup {
    html! {
        (node.label)
        @if node.optional { " " span.optional { "(optional)" } }
    }
}

fn hint(node: &Node, id: &str, extra: Option<&str>) -> Markup {
    html! {
        @if let Some(text) = &node.hint { p.hint id={ (id) "-hint" } { (text) } }
        @if let Some(text) = extra { p.hint { (text) } }
    }
}

fn errors(node: &Node, id: &str) -> Markup {
    html! {
        @if !node.errors.is_empty() {
            p.error id={ (id) "-error" } { (node.errors.join("; ")) }
        }
    }
}

/// `aria-describedby` of the node's main control.
fn described_by(node: &Node, id: &str) -> Option<String> {
    let mut parts = Vec::new();
    if !node.errors.is_empty() {
        parts.push(format!("{id}-error"));
    }
    if node.hint.is_some() {
        parts.push(format!("{id}-hint"));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn invalid(node: &Node) -> Option<&'static str> {
    (!node.errors.is_empty()).then_some("true")
}

fn options(options: &[Opt]) -> Markup {
    html! {
        @for o in options { option value=(o.value) selected[o.selected] { (o.label) } }
    }
}

fn field(node: &Node) -> Markup {
    let id = field_id(&node.name);
    let name = node.name.as_str();
    let described = described_by(node, &id);
    match &node.widget {
        Widget::Input {
            kind,
            value,
            min_length,
            max_length,
            min,
            max,
        } => {
            let (input_type, step) = match kind {
                TextKind::Text | TextKind::DateTime => ("text", None),
                TextKind::Url => ("url", None),
                TextKind::Email => ("email", None),
                TextKind::Date => ("date", None),
                TextKind::Integer => ("number", Some("1")),
                TextKind::Number => ("number", Some("any")),
            };
            html! {
                div.field {
                    label for=(id) { (label_text(node)) }
                    (hint(node, &id, None))
                    input type=(input_type) name=(name) id=(id) value=(value) step=[step]
                        minlength=[min_length] maxlength=[max_length] min=[min] max=[max]
                        aria-invalid=[invalid(node)] aria-describedby=[described];
                    (errors(node, &id))
                }
            }
        }
        Widget::DateTime { local, offset } => {
            let offset_id = format!("{id}_23tz");
            html! {
                div.field.date-time {
                    label for=(id) { (label_text(node)) }
                    (hint(node, &id, None))
                    input type="datetime-local" step="1" name=(name) id=(id) value=(local)
                        aria-invalid=[invalid(node)] aria-describedby=[described];
                    " "
                    label.offset for=(offset_id) { "UTC offset" }
                    " "
                    input.offset type="text" name={ (name) "#tz" } id=(offset_id) value=(offset)
                        size="6" placeholder="Z" pattern="[Zz]|[+\\-][0-9]{2}:[0-9]{2}";
                    (errors(node, &id))
                }
            }
        }
        Widget::Password { kept } => html! {
            div.field.secret {
                label for=(id) { (label_text(node)) }
                (hint(node, &id, kept.then_some("Kept unless you type a new value.")))
                input type="password" name=(name) id=(id) autocomplete="new-password"
                    aria-invalid=[invalid(node)] aria-describedby=[described];
                (errors(node, &id))
            }
        },
        Widget::Json {
            kind,
            value,
            secret,
            kept,
        } => {
            let what = if *secret
                && *kind == JsonKind::Object
                && node.api.last().is_some_and(|k| k == "service_account_info")
            {
                "JSON object: paste the service-account key JSON.".to_owned()
            } else {
                format!("{}.", kind.describe())
            };
            let kept = (*secret && *kept).then_some("Kept unless you type a new value.");
            html! {
                div.field.secret[*secret] {
                    label for=(id) { (label_text(node)) }
                    p.hint.format { (what) }
                    (hint(node, &id, kept))
                    textarea.json name=(name) id=(id) rows="6" spellcheck="false"
                        autocomplete="off" aria-invalid=[invalid(node)]
                        aria-describedby=[described] { (value) }
                    (errors(node, &id))
                }
            }
        }
        Widget::Switch { checked } => html! {
            div.field.switch {
                input type="hidden" name=(name) value="false";
                input type="checkbox" role="switch" name=(name) id=(id) value="true"
                    checked[*checked] aria-invalid=[invalid(node)] aria-describedby=[described];
                " "
                label for=(id) { (label_text(node)) }
                (hint(node, &id, None))
                (errors(node, &id))
            }
        },
        Widget::Select { options: list } => html! {
            div.field {
                label for=(id) { (label_text(node)) }
                (hint(node, &id, None))
                select name=(name) id=(id) aria-invalid=[invalid(node)]
                    aria-describedby=[described] { (options(list)) }
                (errors(node, &id))
            }
        },
        Widget::Reference {
            options: list,
            slug,
            type_name,
        } => html! {
            div.field.ref {
                label for=(id) { (label_text(node)) }
                (hint(node, &id, None))
                select name=(name) id=(id) data-block-type=(slug) aria-invalid=[invalid(node)]
                    aria-describedby=[described] { (options(list)) }
                " "
                button type="submit" name="_action" value={ "new-ref:" (name) ":" (slug) }
                    formnovalidate data-new-ref { "Create new " (type_name) }
                (errors(node, &id))
            }
        },
        Widget::Group { children } => html! {
            fieldset.group id=(id) {
                legend { (label_text(node)) }
                (hint(node, &id, None))
                (errors(node, &id))
                "\n"
                @for child in children { (field(child)) "\n" }
            }
        },
        Widget::Choice {
            options: list,
            alternatives,
        } => {
            let select_id = field_id(&format!("{name}#choice"));
            html! {
                div.field.choice id=(id) {
                    label for=(select_id) { (label_text(node)) }
                    (hint(node, &id, None))
                    select name={ (name) "#choice" } id=(select_id) data-choice
                        aria-invalid=[invalid(node)] aria-describedby=[described] { (options(list)) }
                    (errors(node, &id))
                    "\n"
                    @for (index, alternative) in alternatives {
                        @if !matches!(alternative.widget, Widget::Null) {
                            div.alternative data-choice-for=(select_id) data-choice-index=(index) {
                                (field(alternative))
                            }
                            "\n"
                        }
                    }
                }
            }
        }
        Widget::Rows { rows, dict } => {
            let noun = if *dict { "entry" } else { "item" };
            html! {
                fieldset.rows id=(id) data-rows=(if *dict { "dict" } else { "array" }) {
                    legend { (label_text(node)) }
                    (hint(node, &id, None))
                    (errors(node, &id))
                    "\n"
                    @for r in rows { (row(name, r, noun)) "\n" }
                    button type="submit" name="_action" value={ "add:" (name) } formnovalidate
                        data-add { "Add " (noun) }
                }
            }
        }
        Widget::Null => html! {},
    }
}

fn row(name: &str, row: &Row, noun: &str) -> Markup {
    html! {
        div.row {
            @if let Some(key) = &row.key { (field(key)) } @else {
                input type="hidden" name={ (name) "." (row.index) "#row" } value="";
            }
            (field(&row.value))
            button type="submit" name="_action" value={ "remove:" (name) "/" (row.index) }
                formnovalidate data-remove { "Remove " (noun) }
        }
    }
}
