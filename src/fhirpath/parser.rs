//! Lexer and Pratt parser: expression text → [`Expr`] tree.
//!
//! The grammar is FHIRPath N1 (<http://hl7.org/fhirpath/N1/grammar.html>). Positions are
//! byte offsets into the expression so a syntax error can point at the offending token.

use rust_decimal::Decimal;

use super::FhirPathError;
use super::functions::{self, FunctionDef};
use super::temporal::{CalendarUnit, Date, DateTime, Time};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// `{}`
    Empty,
    Literal(Literal),
    /// A bare identifier: a member of `$this`, or a type name (`Patient.name`).
    Ident(String),
    /// `$this`, `$index`, `$total`.
    This,
    Index,
    Total,
    /// `%name`
    Env(String),
    /// `target.name`
    Member(Box<Expr>, String),
    /// `target.name(args)`, or `name(args)` with the focus as target.
    Call {
        target: Option<Box<Expr>>,
        name: String,
        args: Vec<Expr>,
        /// Byte offset of the name, for error messages.
        at: usize,
        /// The function's row in the table, found when parsing so that evaluation does not
        /// search for it; `None` for a function the engine does not implement (an error
        /// when evaluated, not when parsed: see [`super::functions::check`]).
        function: Option<&'static FunctionDef>,
    },
    /// `target[index]`
    Indexer(Box<Expr>, Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, TypeSpec),
    As(Box<Expr>, TypeSpec),
    /// `expr`, computed once per evaluation and kept in `slot` ([`super::memo`]); never
    /// parsed, only planned.
    Memo {
        slot: usize,
        expr: Box<Expr>,
    },
}

impl Expr {
    /// The expressions directly inside this one, in source order (a call's target, then
    /// its arguments). [`super::functions::roles`] says how each is evaluated.
    pub(crate) fn parts(&self) -> Vec<&Expr> {
        match self {
            Expr::Empty
            | Expr::Literal(_)
            | Expr::Ident(_)
            | Expr::This
            | Expr::Index
            | Expr::Total
            | Expr::Env(_) => Vec::new(),
            Expr::Member(inner, _)
            | Expr::Negate(inner)
            | Expr::Is(inner, _)
            | Expr::As(inner, _)
            | Expr::Memo { expr: inner, .. } => vec![inner],
            Expr::Indexer(a, b) | Expr::Binary(_, a, b) => vec![a, b],
            Expr::Call { target, args, .. } => target.as_deref().into_iter().chain(args).collect(),
        }
    }

    /// [`Expr::parts`], to rewrite them.
    pub(crate) fn parts_mut(&mut self) -> Vec<&mut Expr> {
        match self {
            Expr::Empty
            | Expr::Literal(_)
            | Expr::Ident(_)
            | Expr::This
            | Expr::Index
            | Expr::Total
            | Expr::Env(_) => Vec::new(),
            Expr::Member(inner, _)
            | Expr::Negate(inner)
            | Expr::Is(inner, _)
            | Expr::As(inner, _)
            | Expr::Memo { expr: inner, .. } => vec![inner],
            Expr::Indexer(a, b) | Expr::Binary(_, a, b) => vec![a, b],
            Expr::Call { target, args, .. } => target
                .as_deref_mut()
                .into_iter()
                .chain(args.iter_mut())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Boolean(bool),
    String(String),
    Integer(i64),
    Long(i64),
    Decimal(Decimal),
    Date(Date),
    DateTime(DateTime),
    Time(Time),
    Quantity(Decimal, String),
}

/// A type name as written: `Quantity`, `FHIR.Quantity`, `System.String`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TypeSpec {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A `backtick` delimited identifier: never a keyword.
    Delimited(String),
    Str(String),
    Number(String),
    Long(i64),
    DateTime(String),
    Time(String),
    This,
    IndexVar,
    TotalVar,
    Env(String),
    Sym(&'static str),
    End,
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

/// 1-based line and column (in characters) of a byte offset into the expression.
pub(crate) fn position_of(src: &str, position: usize) -> (usize, usize) {
    crate::fhir::locate::line_column(src, position)
}

fn syntax(position: usize, src: &str, message: impl Into<String>) -> FhirPathError {
    let (line, column) = position_of(src, position);
    FhirPathError::Syntax {
        position,
        line,
        column,
        message: message.into(),
    }
}

const SYMBOLS: [&str; 22] = [
    "<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", ",", "+", "-", "*", "/", "&", "|", "=", "~",
    "<", ">", "{", "}",
];

impl<'s> Lexer<'s> {
    fn peek_char(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn skip_trivia(&mut self) -> Result<(), FhirPathError> {
        loop {
            let rest = &self.src[self.pos..];
            if let Some(c) = rest.chars().next()
                && c.is_whitespace()
            {
                self.pos += c.len_utf8();
            } else if rest.starts_with("//") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if rest.starts_with("/*") {
                match rest.strip_prefix("/*").and_then(|r| r.find("*/")) {
                    Some(end) => self.pos += end + 4,
                    None => return Err(syntax(self.pos, self.src, "unterminated comment")),
                }
            } else {
                return Ok(());
            }
        }
    }

    /// The next token and its start offset.
    fn next(&mut self) -> Result<(Tok, usize), FhirPathError> {
        self.skip_trivia()?;
        let start = self.pos;
        let rest = &self.src[self.pos..];
        let Some(c) = rest.chars().next() else {
            return Ok((Tok::End, start));
        };
        if c.is_ascii_alphabetic() || c == '_' {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            self.pos += len;
            return Ok((Tok::Ident(rest[..len].to_string()), start));
        }
        if c.is_ascii_digit() {
            return self.number(start);
        }
        match c {
            '\'' => {
                let s = self.quoted('\'')?;
                Ok((Tok::Str(s), start))
            }
            '`' => {
                let s = self.quoted('`')?;
                Ok((Tok::Delimited(s), start))
            }
            '@' => {
                self.pos += 1;
                let rest = &self.src[self.pos..];
                let len = rest
                    .find(|c: char| {
                        !(c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+'))
                    })
                    .unwrap_or(rest.len());
                let mut text = &rest[..len];
                // `@2014.precision()`: a trailing `.` not followed by digits belongs to the
                // invocation, not to the literal.
                while let Some(dot) = text.rfind('.') {
                    if text[dot + 1..]
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_digit())
                    {
                        break;
                    }
                    text = &text[..dot];
                }
                self.pos += text.len();
                if let Some(time) = text.strip_prefix('T') {
                    Ok((Tok::Time(time.to_string()), start))
                } else {
                    Ok((Tok::DateTime(text.to_string()), start))
                }
            }
            '$' => {
                self.pos += 1;
                let rest = &self.src[self.pos..];
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                self.pos += len;
                match &rest[..len] {
                    "this" => Ok((Tok::This, start)),
                    "index" => Ok((Tok::IndexVar, start)),
                    "total" => Ok((Tok::TotalVar, start)),
                    other => Err(syntax(
                        start,
                        self.src,
                        format!("unknown variable ${other}"),
                    )),
                }
            }
            '%' => {
                self.pos += 1;
                match self.peek_char() {
                    Some('`') => Ok((Tok::Env(self.quoted('`')?), start)),
                    Some('\'') => Ok((Tok::Env(self.quoted('\'')?), start)),
                    _ => {
                        let rest = &self.src[self.pos..];
                        let len = rest
                            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                            .unwrap_or(rest.len());
                        if len == 0 {
                            return Err(syntax(start, self.src, "expected a name after %"));
                        }
                        self.pos += len;
                        Ok((Tok::Env(rest[..len].to_string()), start))
                    }
                }
            }
            _ => {
                for sym in SYMBOLS {
                    if rest.starts_with(sym) {
                        self.pos += sym.len();
                        return Ok((Tok::Sym(sym), start));
                    }
                }
                Err(syntax(
                    start,
                    self.src,
                    format!("unexpected character '{c}'"),
                ))
            }
        }
    }

    fn number(&mut self, start: usize) -> Result<(Tok, usize), FhirPathError> {
        let rest = &self.src[self.pos..];
        let mut len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let after = &rest[len..];
        // `1.5` is a decimal; `1.abs()` is an invocation on 1.
        if after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit()) {
            len += 1 + after[1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len() - 1);
        } else if after.starts_with('L') {
            self.pos += len + 1;
            let value = rest[..len]
                .parse()
                .map_err(|_| syntax(start, self.src, "long literal out of range"))?;
            return Ok((Tok::Long(value), start));
        }
        self.pos += len;
        Ok((Tok::Number(rest[..len].to_string()), start))
    }

    fn quoted(&mut self, quote: char) -> Result<String, FhirPathError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.src[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.pos += i + 1;
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some((_, e)) = chars.next() else { break };
            match e {
                't' => out.push('\t'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                    let code = u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| syntax(start, self.src, "bad \\u escape"))?;
                    out.push(code);
                }
                other => out.push(other),
            }
        }
        Err(syntax(start, self.src, "unterminated string"))
    }
}

/// Parses a whole expression.
pub(crate) fn parse(src: &str) -> Result<Expr, FhirPathError> {
    let mut lexer = Lexer { src, pos: 0 };
    let mut tokens = Vec::new();
    loop {
        let (tok, at) = lexer.next()?;
        let end = tok == Tok::End;
        tokens.push((tok, at));
        if end {
            break;
        }
    }
    let mut parser = Parser {
        src,
        tokens,
        pos: 0,
        depth: 0,
    };
    let expr = parser.expression(0)?;
    let (tok, at) = parser.peek();
    if *tok != Tok::End {
        return Err(syntax(
            at,
            src,
            "unexpected token after the end of the expression",
        ));
    }
    // The evaluator recurses over the tree: bound its depth (long `a + b + c…` chains
    // grow it without any parentheses).
    if depth(&expr) > MAX_DEPTH {
        return Err(syntax(0, src, "expression nested too deeply"));
    }
    Ok(expr)
}

/// Tree depth. Its own recursion is bounded too: every chain is at most as long as the
/// tokens that built it, and parenthesised nesting is already limited while parsing.
fn depth(e: &Expr) -> usize {
    let children: Vec<&Expr> = match e {
        Expr::Member(t, _) | Expr::Negate(t) | Expr::Is(t, _) | Expr::As(t, _) => vec![t],
        Expr::Indexer(a, b) | Expr::Binary(_, a, b) => vec![a, b],
        Expr::Call { target, args, .. } => target.iter().map(|t| t.as_ref()).chain(args).collect(),
        _ => Vec::new(),
    };
    1 + children.iter().map(|c| depth(c)).max().unwrap_or(0)
}

struct Parser<'s> {
    src: &'s str,
    tokens: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

/// Deep nesting would overflow the parser's stack; no real expression comes near this
/// (the deepest R4 core invariant, dom-3, is 14 levels deep). The evaluator, whose
/// frames are larger, also watches its stack use (`eval::STACK_BUDGET`).
const MAX_DEPTH: usize = 200;

impl Parser<'_> {
    fn peek(&self) -> (&Tok, usize) {
        let (tok, at) = &self.tokens[self.pos.min(self.tokens.len() - 1)];
        (tok, *at)
    }

    fn bump(&mut self) -> (Tok, usize) {
        let item = self.tokens[self.pos.min(self.tokens.len() - 1)].clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        item
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), FhirPathError> {
        let (tok, at) = self.bump();
        if tok == Tok::Sym(sym) {
            Ok(())
        } else {
            Err(syntax(at, self.src, format!("expected '{sym}'")))
        }
    }

    /// The binary operator at the cursor, with its binding power.
    fn binary_op(&self) -> Option<(BinOp, u8)> {
        let op = match self.peek().0 {
            Tok::Sym("*") => (BinOp::Mul, 10),
            Tok::Sym("/") => (BinOp::Div, 10),
            Tok::Ident(w) if w == "div" => (BinOp::IntDiv, 10),
            Tok::Ident(w) if w == "mod" => (BinOp::Mod, 10),
            Tok::Sym("+") => (BinOp::Add, 9),
            Tok::Sym("-") => (BinOp::Sub, 9),
            Tok::Sym("&") => (BinOp::Concat, 9),
            Tok::Sym("|") => (BinOp::Union, 7),
            Tok::Sym("<") => (BinOp::Lt, 6),
            Tok::Sym(">") => (BinOp::Gt, 6),
            Tok::Sym("<=") => (BinOp::Le, 6),
            Tok::Sym(">=") => (BinOp::Ge, 6),
            Tok::Sym("=") => (BinOp::Eq, 5),
            Tok::Sym("!=") => (BinOp::Ne, 5),
            Tok::Sym("~") => (BinOp::Equiv, 5),
            Tok::Sym("!~") => (BinOp::NotEquiv, 5),
            Tok::Ident(w) if w == "in" => (BinOp::In, 4),
            Tok::Ident(w) if w == "contains" => (BinOp::Contains, 4),
            Tok::Ident(w) if w == "and" => (BinOp::And, 3),
            Tok::Ident(w) if w == "or" => (BinOp::Or, 2),
            Tok::Ident(w) if w == "xor" => (BinOp::Xor, 2),
            Tok::Ident(w) if w == "implies" => (BinOp::Implies, 1),
            _ => return None,
        };
        Some(op)
    }

    /// One level deeper into the expression; an error past `MAX_DEPTH`.
    fn deeper(&mut self) -> Result<(), FhirPathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(syntax(
                self.peek().1,
                self.src,
                "expression nested too deeply",
            ));
        }
        Ok(())
    }

    fn expression(&mut self, min_power: u8) -> Result<Expr, FhirPathError> {
        self.deeper()?;
        let mut left = self.unary()?;
        // Each operator in a chain deepens the tree by one: count it against the limit.
        let depth_on_entry = self.depth;
        loop {
            self.deeper()?;
            // `is` and `as` (power 8) take a type, not an expression.
            if let Tok::Ident(w) = self.peek().0
                && (w == "is" || w == "as")
                && 8 >= min_power
                && !matches!(self.tokens.get(self.pos + 1), Some((Tok::Sym("("), _)))
            {
                let is = w == "is";
                self.bump();
                let spec = self.type_spec()?;
                left = if is {
                    Expr::Is(Box::new(left), spec)
                } else {
                    Expr::As(Box::new(left), spec)
                };
                continue;
            }
            let Some((op, power)) = self.binary_op() else {
                break;
            };
            if power < min_power {
                break;
            }
            self.bump();
            // All binary operators are left-associative.
            let right = self.expression(power + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        self.depth = depth_on_entry - 1;
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FhirPathError> {
        self.deeper()?;
        let result = self.unary_inner();
        self.depth -= 1;
        result
    }

    fn unary_inner(&mut self) -> Result<Expr, FhirPathError> {
        match self.peek().0 {
            Tok::Sym("-") => {
                self.bump();
                let operand = self.unary()?;
                Ok(match operand {
                    // Fold `-5` into a literal so `-9223372036854775808` style bounds and
                    // `-1.5` keep their literal meaning.
                    Expr::Literal(Literal::Integer(i)) => Expr::Literal(Literal::Integer(-i)),
                    Expr::Literal(Literal::Decimal(d)) => Expr::Literal(Literal::Decimal(-d)),
                    Expr::Literal(Literal::Quantity(d, u)) => {
                        Expr::Literal(Literal::Quantity(-d, u))
                    }
                    other => Expr::Negate(Box::new(other)),
                })
            }
            Tok::Sym("+") => {
                self.bump();
                self.unary()
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, FhirPathError> {
        let mut expr = self.term()?;
        let depth_on_entry = self.depth;
        let result = loop {
            self.deeper()?;
            match self.peek().0 {
                Tok::Sym(".") => {
                    self.bump();
                    let (tok, at) = self.bump();
                    let name = match tok {
                        Tok::Ident(n) | Tok::Delimited(n) => n,
                        _ => return Err(syntax(at, self.src, "expected a name after '.'")),
                    };
                    if self.peek().0 == &Tok::Sym("(") {
                        let args = self.arguments()?;
                        expr = Expr::Call {
                            target: Some(Box::new(expr)),
                            function: functions::lookup(&name),
                            name,
                            args,
                            at,
                        };
                    } else {
                        expr = Expr::Member(Box::new(expr), name);
                    }
                }
                Tok::Sym("[") => {
                    self.bump();
                    let index = self.expression(0)?;
                    self.expect("]")?;
                    expr = Expr::Indexer(Box::new(expr), Box::new(index));
                }
                _ => break Ok(expr),
            }
        };
        self.depth = depth_on_entry;
        result
    }

    fn arguments(&mut self) -> Result<Vec<Expr>, FhirPathError> {
        self.expect("(")?;
        let mut args = Vec::new();
        if self.peek().0 == &Tok::Sym(")") {
            self.bump();
            return Ok(args);
        }
        loop {
            args.push(self.expression(0)?);
            let (tok, at) = self.bump();
            match tok {
                Tok::Sym(",") => continue,
                Tok::Sym(")") => return Ok(args),
                _ => return Err(syntax(at, self.src, "expected ',' or ')'")),
            }
        }
    }

    fn type_spec(&mut self) -> Result<TypeSpec, FhirPathError> {
        let (tok, at) = self.bump();
        let first = match tok {
            Tok::Ident(n) | Tok::Delimited(n) => n,
            _ => return Err(syntax(at, self.src, "expected a type name")),
        };
        if self.peek().0 == &Tok::Sym(".")
            && matches!(
                self.tokens.get(self.pos + 1),
                Some((Tok::Ident(_) | Tok::Delimited(_), _))
            )
        {
            self.bump();
            let (tok, _) = self.bump();
            if let Tok::Ident(name) | Tok::Delimited(name) = tok {
                return Ok(TypeSpec {
                    namespace: Some(first),
                    name,
                });
            }
        }
        Ok(TypeSpec {
            namespace: None,
            name: first,
        })
    }

    fn term(&mut self) -> Result<Expr, FhirPathError> {
        let (tok, at) = self.bump();
        match tok {
            Tok::Sym("(") => {
                let inner = self.expression(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Sym("{") => {
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Tok::Str(s) => Ok(Expr::Literal(Literal::String(s))),
            Tok::Long(l) => Ok(Expr::Literal(Literal::Long(l))),
            Tok::Number(text) => self.number(&text, at),
            Tok::DateTime(text) => parse_datetime_literal(&text)
                .ok_or_else(|| syntax(at, self.src, format!("invalid date/time literal @{text}"))),
            Tok::Time(text) => Time::parse(&text)
                .map(|t| Expr::Literal(Literal::Time(t)))
                .ok_or_else(|| syntax(at, self.src, format!("invalid time literal @T{text}"))),
            Tok::This => Ok(Expr::This),
            Tok::IndexVar => Ok(Expr::Index),
            Tok::TotalVar => Ok(Expr::Total),
            Tok::Env(name) => Ok(Expr::Env(name)),
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Literal(Literal::Boolean(true))),
                "false" => Ok(Expr::Literal(Literal::Boolean(false))),
                _ if self.peek().0 == &Tok::Sym("(") => {
                    let args = self.arguments()?;
                    Ok(Expr::Call {
                        target: None,
                        function: functions::lookup(&name),
                        name,
                        args,
                        at,
                    })
                }
                // `contains`, `in`, `div`… are names too where no operator can stand
                // (`repeat(contains)`); only the boolean operators never are.
                "and" | "or" | "xor" | "implies" => {
                    Err(syntax(at, self.src, format!("unexpected keyword '{name}'")))
                }
                _ => Ok(Expr::Ident(name)),
            },
            Tok::Delimited(name) => Ok(Expr::Ident(name)),
            Tok::End => Err(syntax(at, self.src, "unexpected end of expression")),
            Tok::Sym(s) => Err(syntax(at, self.src, format!("unexpected '{s}'"))),
        }
    }

    fn number(&mut self, text: &str, at: usize) -> Result<Expr, FhirPathError> {
        let value: Decimal = text
            .parse()
            .map_err(|_| syntax(at, self.src, "number out of range"))?;
        // A number followed by a unit string or a calendar word is a quantity.
        match self.peek().0.clone() {
            Tok::Str(unit) => {
                self.bump();
                return Ok(Expr::Literal(Literal::Quantity(value, unit)));
            }
            Tok::Ident(word) if CalendarUnit::from_word(word.as_str()).is_some() => {
                self.bump();
                return Ok(Expr::Literal(Literal::Quantity(value, word)));
            }
            _ => {}
        }
        if text.contains('.') {
            Ok(Expr::Literal(Literal::Decimal(value)))
        } else {
            text.parse::<i64>()
                .map(|i| Expr::Literal(Literal::Integer(i)))
                .map_err(|_| syntax(at, self.src, "integer out of range"))
        }
    }
}

fn parse_datetime_literal(text: &str) -> Option<Expr> {
    if text.contains('T') {
        DateTime::parse(text).map(|d| Expr::Literal(Literal::DateTime(d)))
    } else {
        Date::parse(text).map(|d| Expr::Literal(Literal::Date(d)))
    }
}
