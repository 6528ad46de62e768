//! Druid's expression language, the part `transformSpec.transforms` commonly use.
//!
//! Literals: longs (`42`), doubles (`1.5`), strings in single quotes (`'a''b'` has a quote),
//! `null`. Identifiers name row fields (bare, or in double quotes); `__time` is the row's time in
//! ms. Operators, tightest first: unary `-` and `!`; `^`; `*` `/` `%`; `+` `-`; `<` `<=` `>`
//! `>=` `==` `!=`; `&&` `||`.
//!
//! Types follow Druid: two longs give a long (long division by zero is null), a double on
//! either side gives a double, a string beside a number is read as a number (null if it is not
//! one), two strings are concatenated by `+` and compared as text; comparisons and logic give
//! 1 or 0; null in arithmetic gives null; null, 0 and strings other than `true` are false.
//!
//! Functions: `concat`, `nvl`, `if`, `case_searched`, `case_simple`, `isnull`, `notnull`,
//! `cast` (`'LONG'`, `'DOUBLE'`, `'STRING'`), `strlen`, `lower`, `upper`, `trim`, `ltrim`,
//! `rtrim`, `substring` (0-based), `left`, `right`, `replace`, `strpos`, `contains_string`,
//! `reverse`, `repeat`, `lpad`, `rpad`, `like`, `regexp_like`, `regexp_extract`, `abs`,
//! `floor`, `ceil`, `round`, `sqrt`, `pow`, `exp`, `log`, `log10`, `div`, `greatest`, `least`,
//! `timestamp` (ISO text, or a Joda pattern), `timestamp_floor`, `timestamp_ceil` (ISO period,
//! UTC), `timestamp_format` (ISO). Anything else is refused when the spec is read, naming it.

use serde_json::Value;

use raftlord_time::Granularity;

/// A value an expression produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Long(i64),
    Double(f64),
    Str(String),
}

impl Val {
    /// From a row field's JSON value (a list gives its first value).
    pub fn from_json(v: &Value) -> Val {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Long(i64::from(*b)),
            Value::Number(n) => match n.as_i64() {
                Some(l) => Val::Long(l),
                None => n.as_f64().map_or(Val::Null, Val::Double),
            },
            Value::String(s) => Val::Str(s.clone()),
            Value::Array(a) => a.first().map_or(Val::Null, Val::from_json),
            Value::Object(_) => Val::Str(v.to_string()),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Long(l) => Value::from(*l),
            Val::Double(d) => serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number),
            Val::Str(s) => Value::from(s.as_str()),
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Val::Null => None,
            Val::Long(l) => Some(l.to_string()),
            Val::Double(d) => Some(d.to_string()),
            Val::Str(s) => Some(s.clone()),
        }
    }

    fn double(&self) -> Option<f64> {
        match self {
            Val::Null => None,
            Val::Long(l) => Some(*l as f64),
            Val::Double(d) => Some(*d),
            Val::Str(s) => s.trim().parse().ok(),
        }
    }

    fn long(&self) -> Option<i64> {
        match self {
            Val::Long(l) => Some(*l),
            Val::Str(s) => s.trim().parse::<i64>().ok().or_else(|| self.double().map(|d| d as i64)),
            other => other.double().map(|d| d as i64),
        }
    }

    pub fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Long(l) => *l != 0,
            Val::Double(d) => *d != 0.0,
            Val::Str(s) => s.eq_ignore_ascii_case("true"),
        }
    }
}

fn bool_val(b: bool) -> Val {
    Val::Long(i64::from(b))
}

/// A parsed expression.
#[derive(Debug, Clone)]
pub enum Expr {
    Lit(Val),
    Field(String),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Pow,
    Mul,
    Div,
    Mod,
    Add,
    Sub,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

/// A function with what it needs beyond its arguments (a compiled pattern, a granularity).
#[derive(Debug, Clone)]
pub enum Func {
    Plain(&'static str),
    Regex(&'static str, regex::Regex),
    Floor(Granularity, bool),
    ParseTime(Option<crate::timestamp::TimestampFormat>),
}

/// Functions and how many arguments each takes (min, max).
const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("concat", 0, usize::MAX),
    ("nvl", 2, 2),
    ("if", 3, 3),
    ("case_searched", 2, usize::MAX),
    ("case_simple", 3, usize::MAX),
    ("isnull", 1, 1),
    ("notnull", 1, 1),
    ("cast", 2, 2),
    ("strlen", 1, 1),
    ("lower", 1, 1),
    ("upper", 1, 1),
    ("trim", 1, 1),
    ("ltrim", 1, 1),
    ("rtrim", 1, 1),
    ("substring", 3, 3),
    ("left", 2, 2),
    ("right", 2, 2),
    ("replace", 3, 3),
    ("strpos", 2, 2),
    ("contains_string", 2, 2),
    ("reverse", 1, 1),
    ("repeat", 2, 2),
    ("lpad", 3, 3),
    ("rpad", 3, 3),
    ("like", 2, 3),
    ("regexp_like", 2, 2),
    ("regexp_extract", 2, 3),
    ("abs", 1, 1),
    ("floor", 1, 1),
    ("ceil", 1, 1),
    ("round", 1, 2),
    ("sqrt", 1, 1),
    ("pow", 2, 2),
    ("exp", 1, 1),
    ("log", 1, 1),
    ("log10", 1, 1),
    ("div", 2, 2),
    ("greatest", 1, usize::MAX),
    ("least", 1, usize::MAX),
    ("timestamp", 1, 2),
    ("timestamp_floor", 2, 4),
    ("timestamp_ceil", 2, 4),
    ("timestamp_format", 1, 1),
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(String),
    Str(String),
    Ident(String),
    Sym(&'static str),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch.is_ascii_digit() || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                // An exponent's sign belongs to the number.
                if (c[i] == 'e' || c[i] == 'E') && matches!(c.get(i + 1), Some('+' | '-')) {
                    i += 1;
                }
                i += 1;
            }
            out.push(Tok::Num(c[start..i].iter().collect()));
        } else if ch == '\'' || ch == '"' {
            let mut text = String::new();
            i += 1;
            loop {
                match c.get(i) {
                    None => return Err(format!("unterminated {ch}quote{ch}")),
                    Some(&q) if q == ch && c.get(i + 1) == Some(&ch) => {
                        text.push(ch);
                        i += 2;
                    }
                    Some(&q) if q == ch => {
                        i += 1;
                        break;
                    }
                    Some('\\') if c.get(i + 1).is_some() => {
                        text.push(c[i + 1]);
                        i += 2;
                    }
                    Some(&other) => {
                        text.push(other);
                        i += 1;
                    }
                }
            }
            out.push(if ch == '\'' { Tok::Str(text) } else { Tok::Ident(text) });
        } else if ch.is_alphabetic() || ch == '_' || ch == '$' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            let sym = ["<=", ">=", "==", "!=", "&&", "||"]
                .into_iter()
                .find(|s| *s == two)
                .or_else(|| {
                    ["+", "-", "*", "/", "%", "^", "<", ">", "!", "(", ")", ","]
                        .into_iter()
                        .find(|s| s.starts_with(ch))
                })
                .ok_or_else(|| format!("unexpected character '{ch}'"))?;
            i += sym.len();
            out.push(Tok::Sym(sym));
        }
    }
    Ok(out)
}

/// Longest expression read, in tokens, and deepest nesting (brackets, calls, unary operators):
/// parsing, evaluating and dropping an expression recurse over its tree, so an expression
/// from a spec must not be able to exhaust a thread's stack.
pub const MAX_TOKENS: usize = 2000;
pub const MAX_NESTING: usize = 64;

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    nesting: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn eat(&mut self, sym: &str) -> bool {
        if self.peek()
            == Some(&Tok::Sym(match sym {
                "(" => "(",
                ")" => ")",
                "," => ",",
                _ => return false,
            }))
        {
            self.at += 1;
            return true;
        }
        false
    }

    fn binary_at(&self, level: usize) -> Option<Op> {
        let Some(Tok::Sym(s)) = self.peek() else { return None };
        let op = match (level, *s) {
            (0, "&&") => Op::And,
            (0, "||") => Op::Or,
            (1, "<") => Op::Lt,
            (1, "<=") => Op::Le,
            (1, ">") => Op::Gt,
            (1, ">=") => Op::Ge,
            (1, "==") => Op::Eq,
            (1, "!=") => Op::Ne,
            (2, "+") => Op::Add,
            (2, "-") => Op::Sub,
            (3, "*") => Op::Mul,
            (3, "/") => Op::Div,
            (3, "%") => Op::Mod,
            _ => return None,
        };
        Some(op)
    }

    /// Left-associative levels 0..=3, then `^` (right-associative), then unary and atoms.
    fn expr(&mut self, level: usize) -> Result<Expr, String> {
        if level == 4 {
            return self.power();
        }
        let mut left = self.expr(level + 1)?;
        while let Some(op) = self.binary_at(level) {
            self.at += 1;
            let right = self.expr(level + 1)?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn power(&mut self) -> Result<Expr, String> {
        let base = self.unary()?;
        if self.peek() == Some(&Tok::Sym("^")) {
            self.at += 1;
            let exp = self.power()?;
            return Ok(Expr::Bin(Op::Pow, Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(format!("the expression nests deeper than {MAX_NESTING} levels"));
        }
        let e = self.unary_inner();
        self.nesting -= 1;
        e
    }

    fn unary_inner(&mut self) -> Result<Expr, String> {
        match self.peek() {
            Some(Tok::Sym("-")) => {
                self.at += 1;
                Ok(Expr::Neg(Box::new(self.unary()?)))
            }
            Some(Tok::Sym("!")) => {
                self.at += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            _ => self.atom(),
        }
    }

    fn atom(&mut self) -> Result<Expr, String> {
        let tok = self.peek().cloned().ok_or("the expression ends too soon")?;
        self.at += 1;
        match tok {
            Tok::Num(n) => {
                if let Ok(l) = n.parse::<i64>() {
                    Ok(Expr::Lit(Val::Long(l)))
                } else {
                    n.parse::<f64>()
                        .map(|d| Expr::Lit(Val::Double(d)))
                        .map_err(|_| format!("[{n}] is not a number"))
                }
            }
            Tok::Str(s) => Ok(Expr::Lit(Val::Str(s))),
            Tok::Sym("(") => {
                let e = self.expr(0)?;
                if !self.eat(")") {
                    return Err("a '(' is not closed".into());
                }
                Ok(e)
            }
            Tok::Ident(name) if name == "null" => Ok(Expr::Lit(Val::Null)),
            Tok::Ident(name) if self.peek() == Some(&Tok::Sym("(")) => {
                self.at += 1;
                let mut args = Vec::new();
                if !self.eat(")") {
                    loop {
                        args.push(self.expr(0)?);
                        if self.eat(")") {
                            break;
                        }
                        if !self.eat(",") {
                            return Err(format!("expected ',' or ')' in the arguments of {name}"));
                        }
                    }
                }
                call(&name, args)
            }
            Tok::Ident(name) => Ok(Expr::Field(name)),
            Tok::Sym(s) => Err(format!("unexpected '{s}'")),
        }
    }
}

fn literal_text<'a>(name: &str, args: &'a [Expr], i: usize) -> Result<Option<&'a str>, String> {
    match args.get(i) {
        None | Some(Expr::Lit(Val::Null)) => Ok(None),
        Some(Expr::Lit(Val::Str(s))) => Ok(Some(s)),
        Some(_) => Err(format!("argument {} of {name} must be a string literal", i + 1)),
    }
}

fn call(name: &str, args: Vec<Expr>) -> Result<Expr, String> {
    let lower = name.to_ascii_lowercase();
    let Some(&(known, min, max)) = FUNCTIONS.iter().find(|(f, _, _)| *f == lower) else {
        return Err(format!("function [{name}] is not supported by this raftlord version"));
    };
    if args.len() < min || args.len() > max {
        return Err(
            format!("function [{known}] takes {min} to {max} arguments, got {}", args.len())
                .replace(&format!("{min} to {min}"), &min.to_string()),
        );
    }
    let func = match known {
        "like" | "regexp_like" | "regexp_extract" => {
            let pattern = literal_text(known, &args, 1)?.ok_or(format!("{known} needs a pattern"))?;
            let pattern = if known == "like" {
                let escape = literal_text(known, &args, 2)?.and_then(|e| e.chars().next());
                crate::filter::like_regex(pattern, escape)
            } else {
                pattern.to_string()
            };
            Func::Regex(
                known,
                regex::Regex::new(&pattern).map_err(|e| format!("{known}: bad pattern: {e}"))?,
            )
        }
        "timestamp_floor" | "timestamp_ceil" => {
            let period = literal_text(known, &args, 1)?.ok_or(format!("{known} needs a period such as 'PT1H'"))?;
            if args.get(2).is_some_and(|a| !matches!(a, Expr::Lit(Val::Null))) {
                return Err(format!("{known}: an origin is not supported by this raftlord version"));
            }
            if let Some(tz) = literal_text(known, &args, 3)? {
                if !matches!(tz, "UTC" | "Etc/UTC" | "Z") {
                    return Err(format!("{known}: only UTC is supported, got [{tz}]"));
                }
            }
            let g = Granularity::parse(&serde_json::json!({"type": "period", "period": period}))
                .map_err(|e| format!("{known}: {e}"))?;
            Func::Floor(g, known == "timestamp_ceil")
        }
        "timestamp" => {
            let format = match literal_text(known, &args, 1)? {
                None => None,
                Some(f) => Some(
                    crate::timestamp::TimestampFormat::parse(f).map_err(|e| format!("timestamp: format [{f}]: {e}"))?,
                ),
            };
            Func::ParseTime(format)
        }
        "cast" => {
            let t = literal_text(known, &args, 1)?.unwrap_or_default().to_ascii_uppercase();
            if !matches!(t.as_str(), "LONG" | "DOUBLE" | "STRING") {
                return Err(format!(
                    "cast to [{t}] is not supported; use 'LONG', 'DOUBLE' or 'STRING'"
                ));
            }
            Func::Plain(known)
        }
        _ => Func::Plain(known),
    };
    Ok(Expr::Call(func, args))
}

impl Expr {
    /// Adds the names of the fields the expression reads to `out`.
    pub fn fields<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Expr::Lit(_) => {}
            Expr::Field(f) => out.push(f),
            Expr::Neg(e) | Expr::Not(e) => e.fields(out),
            Expr::Bin(_, a, b) => {
                a.fields(out);
                b.fields(out);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.fields(out)),
        }
    }

    /// Parses an expression; the error says what is wrong (an unknown function by name).
    pub fn parse(text: &str) -> Result<Expr, String> {
        let toks = lex(text)?;
        if toks.len() > MAX_TOKENS {
            return Err(format!("the expression is longer than {MAX_TOKENS} tokens"));
        }
        let mut p = Parser {
            toks,
            at: 0,
            nesting: 0,
        };
        let e = p.expr(0)?;
        if let Some(t) = p.peek() {
            return Err(format!("unexpected {t:?} after a whole expression"));
        }
        Ok(e)
    }

    /// The value for a row whose fields `field` gives.
    pub fn eval(&self, field: &dyn Fn(&str) -> Val) -> Val {
        match self {
            Expr::Lit(v) => v.clone(),
            Expr::Field(name) => field(name),
            Expr::Neg(e) => match e.eval(field) {
                Val::Long(l) => Val::Long(l.wrapping_neg()),
                other => other.double().map_or(Val::Null, |d| Val::Double(-d)),
            },
            Expr::Not(e) => bool_val(!e.eval(field).truthy()),
            Expr::Bin(op, a, b) => binary(*op, a.eval(field), b.eval(field)),
            Expr::Call(f, args) => apply(f, args, field),
        }
    }
}

fn binary(op: Op, a: Val, b: Val) -> Val {
    match op {
        Op::And => return bool_val(a.truthy() && b.truthy()),
        Op::Or => return bool_val(a.truthy() || b.truthy()),
        _ => {}
    }
    if matches!(a, Val::Null) || matches!(b, Val::Null) {
        return Val::Null;
    }
    if let (Val::Str(x), Val::Str(y)) = (&a, &b) {
        return match op {
            Op::Add => Val::Str(format!("{x}{y}")),
            Op::Lt => bool_val(x < y),
            Op::Le => bool_val(x <= y),
            Op::Gt => bool_val(x > y),
            Op::Ge => bool_val(x >= y),
            Op::Eq => bool_val(x == y),
            Op::Ne => bool_val(x != y),
            _ => Val::Null,
        };
    }
    if let (Val::Long(x), Val::Long(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        return match op {
            Op::Add => Val::Long(x.wrapping_add(y)),
            Op::Sub => Val::Long(x.wrapping_sub(y)),
            Op::Mul => Val::Long(x.wrapping_mul(y)),
            Op::Div => x.checked_div(y).map_or(Val::Null, Val::Long),
            Op::Mod => x.checked_rem(y).map_or(Val::Null, Val::Long),
            Op::Pow => u32::try_from(y)
                .ok()
                .and_then(|y| x.checked_pow(y))
                .map_or_else(|| Val::Double((x as f64).powf(y as f64)), Val::Long),
            Op::Lt => bool_val(x < y),
            Op::Le => bool_val(x <= y),
            Op::Gt => bool_val(x > y),
            Op::Ge => bool_val(x >= y),
            Op::Eq => bool_val(x == y),
            Op::Ne => bool_val(x != y),
            Op::And | Op::Or => unreachable!("handled above"),
        };
    }
    let (Some(x), Some(y)) = (a.double(), b.double()) else {
        return Val::Null;
    };
    match op {
        Op::Add => Val::Double(x + y),
        Op::Sub => Val::Double(x - y),
        Op::Mul => Val::Double(x * y),
        Op::Div => Val::Double(x / y),
        Op::Mod => Val::Double(x % y),
        Op::Pow => Val::Double(x.powf(y)),
        Op::Lt => bool_val(x < y),
        Op::Le => bool_val(x <= y),
        Op::Gt => bool_val(x > y),
        Op::Ge => bool_val(x >= y),
        Op::Eq => bool_val(x == y),
        Op::Ne => bool_val(x != y),
        Op::And | Op::Or => unreachable!("handled above"),
    }
}

fn num(d: f64) -> Val {
    Val::Double(d)
}

/// A long when `d` is a whole number in range (rounding functions keep longs long).
fn whole(v: &Val, f: fn(f64) -> f64) -> Val {
    match v {
        Val::Long(l) => Val::Long(*l),
        other => other.double().map_or(Val::Null, |d| num(f(d))),
    }
}

fn apply(f: &Func, args: &[Expr], field: &dyn Fn(&str) -> Val) -> Val {
    let arg = |i: usize| args.get(i).map_or(Val::Null, |a| a.eval(field));
    let text = |i: usize| arg(i).text();
    match f {
        Func::Regex(name, re) => {
            let Some(s) = text(0) else { return Val::Null };
            match *name {
                "regexp_extract" => {
                    let group = arg(2).long().unwrap_or(0).max(0) as usize;
                    re.captures(&s)
                        .and_then(|c| c.get(group))
                        .map_or(Val::Null, |m| Val::Str(m.as_str().to_string()))
                }
                _ => bool_val(re.is_match(&s)),
            }
        }
        Func::Floor(g, ceil) => {
            let Some(t) = arg(0).long() else { return Val::Null };
            match g.bucket(t) {
                Some(b) if *ceil && b.start != t => Val::Long(b.end),
                Some(b) => Val::Long(b.start),
                None => Val::Null,
            }
        }
        Func::ParseTime(format) => match (arg(0), format) {
            (Val::Null, _) => Val::Null,
            (v, Some(fmt)) => v.text().and_then(|s| fmt.parse_str(&s)).map_or(Val::Null, Val::Long),
            (Val::Str(s), None) => raftlord_time::interval::parse_instant(&s).map_or(Val::Null, Val::Long),
            (v, None) => v.long().map_or(Val::Null, Val::Long),
        },
        Func::Plain(name) => match *name {
            "concat" => {
                let mut out = String::new();
                for i in 0..args.len() {
                    match text(i) {
                        Some(s) => out.push_str(&s),
                        None => return Val::Null,
                    }
                }
                Val::Str(out)
            }
            "nvl" => match arg(0) {
                Val::Null => arg(1),
                v => v,
            },
            "if" => {
                if arg(0).truthy() {
                    arg(1)
                } else {
                    arg(2)
                }
            }
            "case_searched" => {
                let mut i = 0;
                while i + 1 < args.len() {
                    if arg(i).truthy() {
                        return arg(i + 1);
                    }
                    i += 2;
                }
                if i < args.len() {
                    arg(i)
                } else {
                    Val::Null
                }
            }
            "case_simple" => {
                let v = arg(0);
                let mut i = 1;
                while i + 1 < args.len() {
                    if binary(Op::Eq, v.clone(), arg(i)).truthy() {
                        return arg(i + 1);
                    }
                    i += 2;
                }
                if i < args.len() {
                    arg(i)
                } else {
                    Val::Null
                }
            }
            "isnull" => bool_val(arg(0) == Val::Null),
            "notnull" => bool_val(arg(0) != Val::Null),
            "cast" => {
                let v = arg(0);
                match text(1).unwrap_or_default().to_ascii_uppercase().as_str() {
                    "LONG" => v.long().map_or(Val::Null, Val::Long),
                    "DOUBLE" => v.double().map_or(Val::Null, Val::Double),
                    _ => v.text().map_or(Val::Null, Val::Str),
                }
            }
            "strlen" => text(0).map_or(Val::Null, |s| Val::Long(s.chars().count() as i64)),
            "lower" => text(0).map_or(Val::Null, |s| Val::Str(s.to_lowercase())),
            "upper" => text(0).map_or(Val::Null, |s| Val::Str(s.to_uppercase())),
            "trim" => text(0).map_or(Val::Null, |s| Val::Str(s.trim().to_string())),
            "ltrim" => text(0).map_or(Val::Null, |s| Val::Str(s.trim_start().to_string())),
            "rtrim" => text(0).map_or(Val::Null, |s| Val::Str(s.trim_end().to_string())),
            "reverse" => text(0).map_or(Val::Null, |s| Val::Str(s.chars().rev().collect())),
            "substring" | "left" | "right" => {
                let Some(s) = text(0) else { return Val::Null };
                let chars: Vec<char> = s.chars().collect();
                let n = chars.len() as i64;
                let (from, len) = match *name {
                    "substring" => (arg(1).long().unwrap_or(0), arg(2).long().unwrap_or(-1)),
                    "left" => (0, arg(1).long().unwrap_or(0)),
                    _ => {
                        let k = arg(1).long().unwrap_or(0).clamp(0, n);
                        (n - k, k)
                    }
                };
                let from = from.clamp(0, n);
                let to = if len < 0 { n } else { from.saturating_add(len).min(n) };
                Val::Str(chars[from as usize..to as usize].iter().collect())
            }
            "replace" => match (text(0), text(1), text(2)) {
                (Some(s), Some(a), Some(b)) if !a.is_empty() => Val::Str(s.replace(&a, &b)),
                (Some(s), Some(_), Some(_)) => Val::Str(s),
                _ => Val::Null,
            },
            "strpos" => match (text(0), text(1)) {
                (Some(s), Some(t)) => Val::Long(s.find(&t).map_or(-1, |i| s[..i].chars().count() as i64)),
                _ => Val::Null,
            },
            "contains_string" => match (text(0), text(1)) {
                (Some(s), Some(t)) => bool_val(s.contains(&t)),
                _ => Val::Null,
            },
            "repeat" => match (text(0), arg(1).long()) {
                (Some(s), Some(n)) => Val::Str(s.repeat(n.clamp(0, 10_000) as usize)),
                _ => Val::Null,
            },
            "lpad" | "rpad" => match (text(0), arg(1).long(), text(2)) {
                (Some(s), Some(n), Some(pad)) => {
                    let n = n.clamp(0, 100_000) as usize;
                    let chars: Vec<char> = s.chars().collect();
                    if chars.len() >= n || pad.is_empty() {
                        return Val::Str(chars[..n.min(chars.len())].iter().collect());
                    }
                    let fill: String = pad.chars().cycle().take(n - chars.len()).collect();
                    Val::Str(if *name == "lpad" { fill + &s } else { s + &fill })
                }
                _ => Val::Null,
            },
            "abs" => match arg(0) {
                Val::Long(l) => Val::Long(l.wrapping_abs()),
                v => v.double().map_or(Val::Null, |d| num(d.abs())),
            },
            "floor" => whole(&arg(0), f64::floor),
            "ceil" => whole(&arg(0), f64::ceil),
            "round" => {
                let scale = arg(1).long().unwrap_or(0).clamp(-18, 18) as i32;
                match arg(0) {
                    Val::Long(l) if scale >= 0 => Val::Long(l),
                    v => v.double().map_or(Val::Null, |d| {
                        let m = 10f64.powi(scale);
                        num((d * m).round() / m)
                    }),
                }
            }
            "sqrt" => arg(0).double().map_or(Val::Null, |d| num(d.sqrt())),
            "exp" => arg(0).double().map_or(Val::Null, |d| num(d.exp())),
            "log" => arg(0).double().map_or(Val::Null, |d| num(d.ln())),
            "log10" => arg(0).double().map_or(Val::Null, |d| num(d.log10())),
            "pow" => binary(Op::Pow, arg(0), arg(1)),
            "div" => match (arg(0).long(), arg(1).long()) {
                (Some(x), Some(y)) => x.checked_div(y).map_or(Val::Null, Val::Long),
                _ => Val::Null,
            },
            "greatest" | "least" => {
                let mut best: Option<Val> = None;
                for i in 0..args.len() {
                    let v = arg(i);
                    if v == Val::Null {
                        continue;
                    }
                    best = Some(match best {
                        None => v,
                        Some(b) => {
                            let v_wins =
                                binary(if *name == "greatest" { Op::Gt } else { Op::Lt }, v.clone(), b.clone());
                            if v_wins.truthy() {
                                v
                            } else {
                                b
                            }
                        }
                    });
                }
                best.unwrap_or(Val::Null)
            }
            "timestamp_format" => arg(0)
                .long()
                .map_or(Val::Null, |t| Val::Str(raftlord_time::interval::iso(t))),
            _ => Val::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str) -> Val {
        let row = |name: &str| match name {
            "page" => Val::Str("Main Page".into()),
            "added" => Val::Long(40),
            "delta" => Val::Double(-2.5),
            "csv" => Val::Str("7".into()),
            "__time" => Val::Long(1_714_525_261_000), // 2024-05-01T01:01:01Z
            _ => Val::Null,
        };
        Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).eval(&row)
    }

    #[test]
    fn operators_follow_druids_precedence_and_types() {
        assert_eq!(eval("1 + 2 * 3"), Val::Long(7));
        assert_eq!(eval("(1 + 2) * 3"), Val::Long(9));
        assert_eq!(eval("2 ^ 3 ^ 2"), Val::Long(512), "^ is right-associative");
        assert_eq!(eval("-2 ^ 2"), Val::Long(4), "unary minus binds tighter than ^");
        assert_eq!(eval("7 / 2"), Val::Long(3));
        assert_eq!(eval("7 / 2.0"), Val::Double(3.5));
        assert_eq!(eval("7 / 0"), Val::Null);
        assert_eq!(eval("added * 2 + delta"), Val::Double(77.5));
        assert_eq!(
            eval("csv * 2"),
            Val::Double(14.0),
            "a string beside a number is read as one"
        );
        assert_eq!(eval("'a' + 'b'"), Val::Str("ab".into()));
        assert_eq!(eval("added > 10 && !(delta > 0)"), Val::Long(1));
        assert_eq!(eval("missing + 1"), Val::Null);
        assert_eq!(eval("1 < 2 == 1"), Val::Long(1));
        assert_eq!(eval("'it''s'"), Val::Str("it's".into()));
        assert_eq!(eval("\"page\""), Val::Str("Main Page".into()));
    }

    #[test]
    fn functions_give_druids_results() {
        assert_eq!(eval("concat(page, '-', added)"), Val::Str("Main Page-40".into()));
        assert_eq!(eval("concat(page, missing)"), Val::Null);
        assert_eq!(eval("nvl(missing, 'none')"), Val::Str("none".into()));
        assert_eq!(eval("if(added > 100, 'big', 'small')"), Val::Str("small".into()));
        assert_eq!(
            eval("case_searched(added > 100, 'big', added > 10, 'mid', 'small')"),
            Val::Str("mid".into())
        );
        assert_eq!(
            eval("case_simple(added, 1, 'one', 40, 'forty', 'other')"),
            Val::Str("forty".into())
        );
        assert_eq!(eval("timestamp_floor(__time, 'PT1H')"), Val::Long(1_714_525_200_000));
        assert_eq!(eval("timestamp_ceil(__time, 'P1D')"), Val::Long(1_714_608_000_000));
        assert_eq!(eval("timestamp('2024-05-01T00:00:00Z')"), Val::Long(1_714_521_600_000));
        assert_eq!(
            eval("timestamp('01/05/2024', 'dd/MM/yyyy')"),
            Val::Long(1_714_521_600_000)
        );
        assert_eq!(
            eval("timestamp_format(timestamp_floor(__time, 'P1D'))"),
            Val::Str("2024-05-01T00:00:00.000Z".into())
        );
        assert_eq!(eval("upper(substring(page, 0, 4))"), Val::Str("MAIN".into()));
        assert_eq!(eval("strlen(page)"), Val::Long(9));
        assert_eq!(eval("strpos(page, 'Page')"), Val::Long(5));
        assert_eq!(eval("replace(page, ' ', '_')"), Val::Str("Main_Page".into()));
        assert_eq!(eval("regexp_extract(page, '([A-Z])[a-z]+$', 1)"), Val::Str("P".into()));
        assert_eq!(eval("like(page, 'Main%')"), Val::Long(1));
        assert_eq!(eval("cast(csv, 'LONG') + 1"), Val::Long(8));
        assert_eq!(eval("abs(delta)"), Val::Double(2.5));
        assert_eq!(eval("round(2.567, 2)"), Val::Double(2.57));
        assert_eq!(eval("greatest(added, 7, missing)"), Val::Long(40));
        assert_eq!(eval("lpad('7', 3, '0')"), Val::Str("007".into()));
        assert_eq!(eval("isnull(missing) + notnull(page)"), Val::Long(2));
    }

    #[test]
    fn what_cannot_run_is_refused_naming_it() {
        let err = |t: &str| Expr::parse(t).unwrap_err();
        assert!(err("json_value(x, '$.a')").contains("[json_value]"));
        assert!(err("concat(a").contains("')'"));
        assert!(err("nvl(a)").contains("nvl"));
        assert!(err("timestamp_floor(__time, 'PT1H', null, 'America/New_York')").contains("UTC"));
        assert!(err("1 +").contains("ends too soon"));
        assert!(err("a b").contains("after a whole expression"));
        assert!(err("'open").contains("unterminated"));
        assert!(err("regexp_like(a, '(')").contains("bad pattern"));
        // Nothing a spec holds can exhaust the stack: deep nesting and long chains are refused.
        assert!(err(&format!("{}1{}", "(".repeat(500), ")".repeat(500))).contains("deeper"));
        assert!(err(&"-".repeat(100_000)).contains("longer"));
        assert!(err(&vec!["1"; 50_000].join("+")).contains("longer"));
        assert!(err(&format!("{}1{}", "concat(".repeat(70), ")".repeat(70))).contains("deeper"));
        assert!(Expr::parse(&format!("{}1{}", "(".repeat(60), ")".repeat(60))).is_ok());
    }

    proptest::proptest! {
        /// Any text parses to an expression or an error, and what parses evaluates.
        #[test]
        fn any_text_parses_or_errs_and_what_parses_evaluates(text in "[-+*/%^!<>=&|(),'a-z0-9_. ]{0,80}") {
            if let Ok(e) = Expr::parse(&text) {
                let _ = e.eval(&|_| Val::Str("7".into()));
            }
        }
    }
}
