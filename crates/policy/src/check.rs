//! Load-time checking of CEL conditions against the allocation object.
//!
//! The `cel` crate parses but does not type-check, so this walks the parsed expression:
//! every free variable must be a documented top-level name, every field selected from a
//! documented object must exist (`limits` takes the policy's components, `attributes` any
//! key), comparisons between values of known, different types (`customer.country == 1`)
//! and boolean operators on non-booleans are refused, and a condition whose type is known
//! must be a boolean. Values reached through `attributes`, indexing (`limits['x']`) or
//! function results are dynamic and checked only at run time.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};

use super::allocation::{FieldType, top_level, top_level_names};

/// What the checker knows about an expression's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    /// A date string or null.
    Date,
    Num,
    Bool,
    Null,
    Field(FieldType),
    Dyn,
}

impl Ty {
    fn of(field: FieldType) -> Ty {
        match field {
            FieldType::String => Ty::Str,
            FieldType::Date => Ty::Date,
            FieldType::Number => Ty::Num,
            FieldType::Bool => Ty::Bool,
            other => Ty::Field(other),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Date => "a date string or null",
            Ty::Num => "a number",
            Ty::Bool => "a boolean",
            Ty::Null => "null",
            Ty::Field(f) => f.describe(),
            Ty::Dyn => "a value",
        }
    }

    /// Whether two known types can never be equal or ordered.
    fn clashes(self, other: Ty) -> bool {
        use Ty::*;
        let family = |t: Ty| match t {
            Str | Date => Some(0),
            Num => Some(1),
            Bool => Some(2),
            Field(_) => Some(3),
            Null | Dyn => None,
        };
        matches!((family(self), family(other)), (Some(a), Some(b)) if a != b)
    }
}

/// A problem found in an expression: where (byte offset in the expression, when known)
/// and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub offset: Option<usize>,
    pub message: String,
}

/// Checks a parsed condition; `offset_of` maps an expression id to its byte offset.
pub fn check_condition(
    root: &IdedExpr,
    components: &[String],
    offset_of: &dyn Fn(u64) -> Option<usize>,
) -> (Vec<Problem>, Vec<String>) {
    let mut checker = Checker {
        components,
        offset_of,
        scope: Vec::new(),
        problems: Vec::new(),
        paths: Vec::new(),
    };
    let ty = checker.walk(root);
    if matches!(ty, Ty::Str | Ty::Date | Ty::Num | Ty::Null | Ty::Field(_)) {
        checker.problem(
            root.id,
            format!(
                "the condition must be a boolean, but it is {}",
                ty.describe()
            ),
        );
    }
    (checker.problems, checker.paths)
}

struct Checker<'a> {
    components: &'a [String],
    offset_of: &'a dyn Fn(u64) -> Option<usize>,
    /// Names bound by comprehensions (`x` in `list.exists(x, ...)`).
    scope: Vec<String>,
    problems: Vec<Problem>,
    /// Every documented field path the condition reads, for `policy explain`.
    paths: Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, id: u64, message: String) {
        self.problems.push(Problem {
            offset: (self.offset_of)(id),
            message,
        });
    }

    fn note_path(&mut self, path: String) {
        if !self.paths.contains(&path) {
            self.paths.push(path);
        }
    }

    /// The dotted path an expression spells when it is a chain of selects on a
    /// documented variable.
    fn path_of(&self, expr: &IdedExpr) -> Option<String> {
        match &expr.expr {
            Expr::Ident(name) if !self.scope.contains(name) && top_level(name).is_some() => {
                Some(name.clone())
            }
            Expr::Select(select) if !select.test => self
                .path_of(&select.operand)
                .map(|p| format!("{p}.{}", select.field)),
            _ => None,
        }
    }

    fn walk(&mut self, e: &IdedExpr) -> Ty {
        match &e.expr {
            Expr::Unspecified => Ty::Dyn,
            Expr::Literal(literal) => match literal {
                LiteralValue::String(_) => Ty::Str,
                LiteralValue::Int(_) | LiteralValue::UInt(_) | LiteralValue::Double(_) => Ty::Num,
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Null => Ty::Null,
                _ => Ty::Dyn,
            },
            Expr::Ident(name) => {
                if self.scope.contains(name) {
                    return Ty::Dyn;
                }
                if let Some(field) = top_level(name) {
                    self.note_path(name.clone());
                    return Ty::of(field);
                }
                if CEL_TYPE_NAMES.contains(&name.as_str()) {
                    return Ty::Dyn;
                }
                self.problem(
                    e.id,
                    format!(
                        "unknown variable `{name}`; known: {}",
                        top_level_names().join(", ")
                    ),
                );
                Ty::Dyn
            }
            Expr::Select(select) => {
                let operand = self.walk(&select.operand);
                let base = self.path_of(&select.operand);
                let field = &select.field;
                let ty = match operand {
                    Ty::Field(FieldType::Object(fields)) => {
                        match fields.iter().find(|(n, _)| n == field) {
                            Some((_, t)) => Ty::of(*t),
                            None => {
                                let base = base.unwrap_or_default();
                                let known: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                                self.problem(
                                    e.id,
                                    format!(
                                        "unknown field `{base}.{field}`; `{base}` has {}",
                                        known.join(", ")
                                    ),
                                );
                                Ty::Dyn
                            }
                        }
                    }
                    Ty::Field(FieldType::Limits) => {
                        if !self.components.iter().any(|c| c == field) {
                            self.problem(
                                e.id,
                                format!(
                                    "unknown component `{}.{field}`; the policy's components are {} (set `components` to add one)",
                                    base.as_deref().unwrap_or("limits"),
                                    self.components.join(", ")
                                ),
                            );
                        }
                        Ty::Num
                    }
                    Ty::Field(FieldType::OpenMap) | Ty::Dyn => Ty::Dyn,
                    other => {
                        let base = base.unwrap_or_else(|| "the value".into());
                        self.problem(
                            e.id,
                            format!(
                                "`{base}` is {} and has no field `{field}`",
                                other.describe()
                            ),
                        );
                        Ty::Dyn
                    }
                };
                if select.test {
                    return Ty::Bool;
                }
                if let Some(path) = self.path_of(e) {
                    self.note_path(path);
                }
                ty
            }
            Expr::Call(call) => {
                let target = call.target.as_ref().map(|t| self.walk(t));
                let args: Vec<Ty> = call.args.iter().map(|a| self.walk(a)).collect();
                self.call_type(e, &call.func_name, target, &args, &call.args)
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                let bound = 2 + usize::from(c.iter_var2.is_some());
                self.scope.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.scope.push(v.clone());
                }
                self.scope.push(c.accu_var.clone());
                self.walk(&c.accu_init);
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                let ty = self.walk(&c.result);
                self.scope.truncate(self.scope.len() - bound);
                ty
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.walk(element);
                }
                Ty::Dyn
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(entry) = &entry.expr {
                        self.walk(&entry.key);
                        self.walk(&entry.value);
                    }
                }
                Ty::Dyn
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(field) = &entry.expr {
                        self.walk(&field.value);
                    }
                }
                Ty::Dyn
            }
        }
    }

    fn call_type(
        &mut self,
        e: &IdedExpr,
        name: &str,
        target: Option<Ty>,
        args: &[Ty],
        arg_exprs: &[IdedExpr],
    ) -> Ty {
        let describe = |i: usize, this: &Checker<'_>| {
            this.path_of(&arg_exprs[i])
                .map(|p| format!("`{p}`"))
                .unwrap_or_else(|| "a value".into())
        };
        match name {
            "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
                if let [a, b] = args
                    && a.clashes(*b)
                {
                    let (left, right) = (describe(0, self), describe(1, self));
                    self.problem(
                        e.id,
                        format!(
                            "{left} is {} and {right} is {}: they cannot be compared",
                            a.describe(),
                            b.describe()
                        ),
                    );
                }
                Ty::Bool
            }
            "_&&_" | "_||_" | "!_" => {
                for (i, ty) in args.iter().enumerate() {
                    if matches!(ty, Ty::Str | Ty::Date | Ty::Num | Ty::Null | Ty::Field(_)) {
                        let operand = describe(i, self);
                        self.problem(
                            e.id,
                            format!(
                                "{operand} is {}, but `{}` needs booleans",
                                ty.describe(),
                                name.trim_matches('_').trim_end_matches('_')
                            ),
                        );
                    }
                }
                Ty::Bool
            }
            "@in" | "contains" | "startsWith" | "endsWith" | "matches" | "@not_strictly_false" => {
                Ty::Bool
            }
            "size" | "int" | "uint" | "double" => Ty::Num,
            "string" => Ty::Str,
            "_+_" | "_-_" | "_*_" | "_/_" | "_%_" | "-_" => {
                if args.iter().all(|t| *t == Ty::Num) {
                    Ty::Num
                } else {
                    Ty::Dyn
                }
            }
            "_?_:_" => match args {
                [_, a, b] if a == b => *a,
                _ => Ty::Dyn,
            },
            _ => {
                let _ = target;
                Ty::Dyn
            }
        }
    }
}

/// Identifiers CEL itself defines (type names, usable in `type(x) == string`).
const CEL_TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];
