//! GraphQL validation for the emulated RunPod API: every document is parsed
//! (graphql-parser) and checked against `schema/runpod.graphql` the way a GraphQL server
//! does before it executes anything: operations, fields and arguments exist, required
//! arguments are given, a variable fits the position it is used in (a nullable variable in
//! a non-null position is the error RunPod answers), selections match the types, and the
//! variables' values fit their declared types. Messages follow graphql-js, which RunPod's
//! server speaks. What passes comes back with its arguments resolved to JSON.

use std::collections::HashMap;

use graphql_parser::query::{
    self, Definition, OperationDefinition, Selection, SelectionSet, Type, Value,
};
use graphql_parser::schema::{self, TypeDefinition};
use serde_json::{Map, Value as Json};

const SCHEMA: &str = include_str!("../schema/runpod.graphql");

/// A type reference: `Name`, `[T]`, `T!`.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Named(String),
    List(Box<Ty>),
    NonNull(Box<Ty>),
}

impl Ty {
    fn from<'a>(t: &Type<'a, String>) -> Ty {
        match t {
            Type::NamedType(n) => Ty::Named(n.clone()),
            Type::ListType(i) => Ty::List(Box::new(Ty::from(i))),
            Type::NonNullType(i) => Ty::NonNull(Box::new(Ty::from(i))),
        }
    }

    fn base(&self) -> &str {
        match self {
            Ty::Named(n) => n,
            Ty::List(i) | Ty::NonNull(i) => i.base(),
        }
    }

    /// Whether a variable of type `self` may be used where `pos` is expected.
    fn fits(&self, pos: &Ty) -> bool {
        match (self, pos) {
            (Ty::NonNull(v), Ty::NonNull(p)) => v.fits(p),
            (Ty::NonNull(v), p) => v.fits(p),
            (_, Ty::NonNull(_)) => false,
            (Ty::List(v), Ty::List(p)) => v.fits(p),
            (Ty::Named(v), Ty::Named(p)) => v == p,
            _ => false,
        }
    }
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::Named(n) => write!(f, "{n}"),
            Ty::List(i) => write!(f, "[{i}]"),
            Ty::NonNull(i) => write!(f, "{i}!"),
        }
    }
}

struct FieldDef {
    args: Vec<(String, Ty)>,
    ty: Ty,
}

enum Def {
    Scalar,
    Enum(Vec<String>),
    Input(Vec<(String, Ty)>),
    Object(HashMap<String, FieldDef>),
}

pub struct Schema {
    types: HashMap<String, Def>,
}

/// One root field of a valid operation, with its arguments as JSON.
#[derive(Debug)]
pub struct Call {
    pub field: String,
    pub args: Map<String, Json>,
}

#[derive(Debug)]
pub struct Operation {
    pub calls: Vec<Call>,
}

fn args_of(list: &[schema::InputValue<'_, String>]) -> Vec<(String, Ty)> {
    list.iter()
        .map(|a| (a.name.clone(), Ty::from(&a.value_type)))
        .collect()
}

impl Schema {
    pub fn load() -> anyhow::Result<Schema> {
        let doc = schema::parse_schema::<String>(SCHEMA)
            .map_err(|e| anyhow::anyhow!("schema/runpod.graphql: {e}"))?;
        let mut types: HashMap<String, Def> = ["String", "Int", "Float", "Boolean", "ID"]
            .iter()
            .map(|n| (n.to_string(), Def::Scalar))
            .collect();
        for d in doc.definitions {
            let schema::Definition::TypeDefinition(t) = d else {
                continue;
            };
            let (name, def) = match t {
                TypeDefinition::Scalar(s) => (s.name, Def::Scalar),
                TypeDefinition::Enum(e) => (
                    e.name,
                    Def::Enum(e.values.into_iter().map(|v| v.name).collect()),
                ),
                TypeDefinition::InputObject(i) => (i.name, Def::Input(args_of(&i.fields))),
                TypeDefinition::Object(o) => (
                    o.name,
                    Def::Object(
                        o.fields
                            .iter()
                            .map(|f| {
                                (
                                    f.name.clone(),
                                    FieldDef {
                                        args: args_of(&f.arguments),
                                        ty: Ty::from(&f.field_type),
                                    },
                                )
                            })
                            .collect(),
                    ),
                ),
                TypeDefinition::Interface(_) | TypeDefinition::Union(_) => continue,
            };
            types.insert(name, def);
        }
        Ok(Schema { types })
    }

    /// Validate `query` with `variables`; the errors are what the server would answer.
    pub fn validate(&self, query: &str, variables: &Json) -> Result<Operation, Vec<String>> {
        let doc = query::parse_query::<String>(query)
            .map_err(|e| vec![format!("Syntax Error: {}", e.to_string().trim())])?;
        let mut ops = Vec::new();
        for d in &doc.definitions {
            match d {
                Definition::Operation(op) => ops.push(op),
                Definition::Fragment(_) => {
                    return Err(vec![
                        "Fragments are not used by gpuctl; the emulator does not resolve them."
                            .into(),
                    ])
                }
            }
        }
        let [op] = ops.as_slice() else {
            return Err(vec![
                "Must provide exactly one operation (gpuctl sends one per request).".into(),
            ]);
        };
        let (mutation, defs, set) = match op {
            OperationDefinition::SelectionSet(s) => (false, &Vec::new(), s),
            OperationDefinition::Query(q) => (false, &q.variable_definitions, &q.selection_set),
            OperationDefinition::Mutation(m) => (true, &m.variable_definitions, &m.selection_set),
            OperationDefinition::Subscription(_) => {
                return Err(vec!["Subscriptions are not supported.".into()])
            }
        };
        let mut errors = Vec::new();
        let vars = self.variables(defs, variables, &mut errors);
        let root = if mutation { "Mutation" } else { "Query" };
        let mut calls = Vec::new();
        for sel in &set.items {
            let Selection::Field(f) = sel else {
                errors.push("Fragments are not used by gpuctl.".into());
                continue;
            };
            let Some(fd) = self.field(root, &f.name) else {
                errors.push(format!(
                    "Cannot query field \"{}\" on type \"{root}\".",
                    f.name
                ));
                continue;
            };
            let args = self.arguments(root, f, fd, &vars, &mut errors);
            self.selection(&fd.ty, &f.name, &f.selection_set, &mut errors);
            calls.push(Call {
                field: f.name.clone(),
                args,
            });
        }
        if errors.is_empty() {
            Ok(Operation { calls })
        } else {
            Err(errors)
        }
    }

    fn field(&self, ty: &str, name: &str) -> Option<&FieldDef> {
        match self.types.get(ty) {
            Some(Def::Object(fields)) => fields.get(name),
            _ => None,
        }
    }

    /// The declared variables with their values (given, or defaults), checked.
    fn variables(
        &self,
        defs: &[query::VariableDefinition<'_, String>],
        given: &Json,
        errors: &mut Vec<String>,
    ) -> HashMap<String, (Ty, Json)> {
        let mut out = HashMap::new();
        for d in defs {
            let ty = Ty::from(&d.var_type);
            if !matches!(
                self.types.get(ty.base()),
                Some(Def::Scalar | Def::Enum(_) | Def::Input(_))
            ) {
                errors.push(format!(
                    "Variable \"${}\" cannot be non-input type \"{ty}\".",
                    d.name
                ));
                continue;
            }
            let value = match (given.get(&d.name), &d.default_value) {
                (Some(v), _) => v.clone(),
                (None, Some(default)) => to_json(default, &HashMap::new()),
                (None, None) => Json::Null,
            };
            if value.is_null() && matches!(ty, Ty::NonNull(_)) {
                errors.push(format!(
                    "Variable \"${}\" of required type \"{ty}\" was not provided.",
                    d.name
                ));
            } else {
                for e in self.check_json(&value, &ty) {
                    errors.push(format!(
                        "Variable \"${}\" got invalid value {value}; {e}",
                        d.name
                    ));
                }
            }
            out.insert(d.name.clone(), (ty, value));
        }
        out
    }

    fn arguments(
        &self,
        parent: &str,
        f: &query::Field<'_, String>,
        fd: &FieldDef,
        vars: &HashMap<String, (Ty, Json)>,
        errors: &mut Vec<String>,
    ) -> Map<String, Json> {
        let mut out = Map::new();
        for (name, value) in &f.arguments {
            let Some((_, ty)) = fd.args.iter().find(|(n, _)| n == name) else {
                errors.push(format!(
                    "Unknown argument \"{name}\" on field \"{parent}.{}\".",
                    f.name
                ));
                continue;
            };
            self.check_value(value, ty, vars, errors);
            out.insert(name.clone(), to_json(value, vars));
        }
        for (name, ty) in &fd.args {
            if matches!(ty, Ty::NonNull(_)) && !f.arguments.iter().any(|(n, _)| n == name) {
                errors.push(format!(
                    "Field \"{}\" argument \"{name}\" of type \"{ty}\" is required, but it was not provided.",
                    f.name
                ));
            }
        }
        out
    }

    /// A literal or variable in a position of type `ty`.
    fn check_value(
        &self,
        v: &Value<'_, String>,
        ty: &Ty,
        vars: &HashMap<String, (Ty, Json)>,
        errors: &mut Vec<String>,
    ) {
        if let Value::Variable(name) = v {
            match vars.get(name) {
                None => errors.push(format!("Variable \"${name}\" is not defined.")),
                Some((vty, _)) if !vty.fits(ty) => errors.push(format!(
                    "Variable \"${name}\" of type \"{vty}\" used in position expecting type \"{ty}\"."
                )),
                Some(_) => {}
            }
            return;
        }
        match (ty, v) {
            (Ty::NonNull(_), Value::Null) => {
                errors.push(format!("Expected value of type \"{ty}\", found null."))
            }
            (Ty::NonNull(i), _) => self.check_value(v, i, vars, errors),
            (_, Value::Null) => {}
            (Ty::List(i), Value::List(items)) => {
                for item in items {
                    self.check_value(item, i, vars, errors);
                }
            }
            (Ty::List(i), _) => self.check_value(v, i, vars, errors),
            (Ty::Named(n), _) => match (self.types.get(n), v) {
                (Some(Def::Input(fields)), Value::Object(given)) => {
                    for (k, item) in given {
                        match fields.iter().find(|(f, _)| f == k) {
                            Some((_, fty)) => self.check_value(item, fty, vars, errors),
                            None => errors
                                .push(format!("Field \"{k}\" is not defined by type \"{n}\".")),
                        }
                    }
                    for (f, fty) in fields {
                        if matches!(fty, Ty::NonNull(_)) && !given.contains_key(f) {
                            errors.push(format!(
                                "Field \"{n}.{f}\" of required type \"{fty}\" was not provided."
                            ));
                        }
                    }
                }
                (Some(Def::Enum(values)), Value::Enum(e)) if values.contains(e) => {}
                (Some(Def::Scalar), _) if literal_fits(n, v) => {}
                _ => errors.push(format!("Expected value of type \"{n}\", found {v}.")),
            },
        }
    }

    /// A variable's JSON value against its declared type: the problems found.
    fn check_json(&self, v: &Json, ty: &Ty) -> Vec<String> {
        match (ty, v) {
            (Ty::NonNull(_), Json::Null) => vec![format!(
                "Expected non-nullable type \"{ty}\" not to be null."
            )],
            (Ty::NonNull(i), _) => self.check_json(v, i),
            (_, Json::Null) => Vec::new(),
            (Ty::List(i), Json::Array(items)) => {
                items.iter().flat_map(|x| self.check_json(x, i)).collect()
            }
            (Ty::List(i), _) => self.check_json(v, i),
            (Ty::Named(n), _) => match self.types.get(n) {
                Some(Def::Input(fields)) => {
                    let Some(obj) = v.as_object() else {
                        return vec![format!("Expected type \"{n}\" to be an object.")];
                    };
                    let mut out: Vec<String> = obj
                        .keys()
                        .filter(|k| !fields.iter().any(|(f, _)| f == *k))
                        .map(|k| format!("Field \"{k}\" is not defined by type \"{n}\"."))
                        .collect();
                    for (f, fty) in fields {
                        match obj.get(f) {
                            Some(x) => out.extend(
                                self.check_json(x, fty)
                                    .into_iter()
                                    .map(|e| format!("at \"{f}\": {e}")),
                            ),
                            None if matches!(fty, Ty::NonNull(_)) => out.push(format!(
                                "Field \"{f}\" of required type \"{fty}\" was not provided."
                            )),
                            None => {}
                        }
                    }
                    out
                }
                Some(Def::Enum(values)) => match v.as_str() {
                    Some(s) if values.iter().any(|x| x == s) => Vec::new(),
                    _ => vec![format!("Value {v} does not exist in \"{n}\" enum.")],
                },
                Some(Def::Scalar) if json_fits(n, v) => Vec::new(),
                Some(Def::Scalar) => vec![format!("{n} cannot represent value: {v}")],
                _ => vec![format!("Unknown type \"{n}\".")],
            },
        }
    }

    /// The selection set under a field of type `ty`.
    fn selection(
        &self,
        ty: &Ty,
        field: &str,
        set: &SelectionSet<'_, String>,
        errors: &mut Vec<String>,
    ) {
        let base = ty.base();
        match self.types.get(base) {
            Some(Def::Object(_)) if set.items.is_empty() => errors.push(format!(
                "Field \"{field}\" of type \"{ty}\" must have a selection of subfields."
            )),
            Some(Def::Object(_)) => {
                for sel in &set.items {
                    let Selection::Field(f) = sel else {
                        errors.push("Fragments are not used by gpuctl.".into());
                        continue;
                    };
                    if f.name == "__typename" {
                        continue;
                    }
                    match self.field(base, &f.name) {
                        Some(fd) => self.selection(&fd.ty, &f.name, &f.selection_set, errors),
                        None => errors.push(format!(
                            "Cannot query field \"{}\" on type \"{base}\".",
                            f.name
                        )),
                    }
                }
            }
            _ if !set.items.is_empty() => errors.push(format!(
                "Field \"{field}\" must not have a selection since type \"{ty}\" has no subfields."
            )),
            _ => {}
        }
    }
}

fn literal_fits(scalar: &str, v: &Value<'_, String>) -> bool {
    match scalar {
        "String" => matches!(v, Value::String(_)),
        "ID" => matches!(v, Value::String(_) | Value::Int(_)),
        "Int" => matches!(v, Value::Int(_)),
        "Float" => matches!(v, Value::Int(_) | Value::Float(_)),
        "Boolean" => matches!(v, Value::Boolean(_)),
        _ => true,
    }
}

fn json_fits(scalar: &str, v: &Json) -> bool {
    match scalar {
        "String" => v.is_string(),
        "ID" => v.is_string() || v.is_i64() || v.is_u64(),
        "Int" => v.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        "Float" => v.is_number(),
        "Boolean" => v.is_boolean(),
        _ => true,
    }
}

/// A literal as JSON, variables substituted.
fn to_json(v: &Value<'_, String>, vars: &HashMap<String, (Ty, Json)>) -> Json {
    match v {
        Value::Variable(n) => vars.get(n).map(|(_, j)| j.clone()).unwrap_or(Json::Null),
        Value::Int(i) => i.as_i64().map(Json::from).unwrap_or(Json::Null),
        Value::Float(f) => Json::from(*f),
        Value::String(s) => Json::from(s.clone()),
        Value::Boolean(b) => Json::from(*b),
        Value::Null => Json::Null,
        Value::Enum(e) => Json::from(e.clone()),
        Value::List(l) => Json::Array(l.iter().map(|x| to_json(x, vars)).collect()),
        Value::Object(o) => Json::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), to_json(x, vars)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::load().expect("the schema parses")
    }

    #[test]
    fn a_nullable_variable_in_a_non_null_position_is_refused() {
        let e = schema()
            .validate(
                "mutation T($input: PodTerminateInput) { podTerminate(input: $input) }",
                &json!({ "input": { "podId": "p" } }),
            )
            .expect_err("refused");
        assert!(
            e[0].contains("Variable \"$input\" of type \"PodTerminateInput\" used in position expecting type \"PodTerminateInput!\""),
            "{e:?}"
        );
    }

    #[test]
    fn the_official_clients_forms_pass_and_resolve() {
        let s = schema();
        let op = s
            .validate(
                "mutation T($podId: String!) { podTerminate(input: {podId: $podId}) }",
                &json!({ "podId": "abc" }),
            )
            .expect("valid");
        assert_eq!(op.calls[0].args["input"]["podId"], "abc");
        s.validate(
            "mutation D($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input: $input) { id costPerHr runtime { ports { ip publicPort } } } }",
            &json!({ "input": { "gpuTypeId": "x", "cloudType": "ALL", "env": [{ "key": "PUBLIC_KEY", "value": "ssh-ed25519 AAAA" }] } }),
        )
        .expect("valid deploy");
    }

    #[test]
    fn unknown_fields_bad_enums_and_missing_selections_are_refused() {
        let s = schema();
        let bad = |q: &str, v: Json| s.validate(q, &v).expect_err("refused").join(" | ");
        assert!(bad("query { myself { pods { nope } } }", json!({}))
            .contains("Cannot query field \"nope\" on type \"Pod\""));
        assert!(bad("query { myself }", json!({})).contains("must have a selection"));
        assert!(bad(
            "mutation D($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input: $input) { id } }",
            json!({ "input": { "cloudType": "BOTH" } })
        )
        .contains("does not exist in \"CloudTypeEnum\""));
        assert!(bad(
            "mutation D($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input: $input) { id } }",
            json!({ "input": { "gpuType": "x" } })
        )
        .contains("Field \"gpuType\" is not defined"));
        assert!(bad("mutation { podTerminate }", json!({})).contains("is required"));
        assert!(bad("query { pod(", json!({})).contains("Syntax Error"));
    }
}
