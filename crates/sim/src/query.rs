//! Query strings and pagination the way Django and Django REST framework treat them.
//!
//! INVARIANT: parsing follows `urllib.parse.parse_qsl(keep_blank_values=True)`:
//! pairs split on `&`, `+` means a space, percent escapes are decoded (invalid
//! UTF-8 is replaced), and a key without `=` has an empty value.
//! INVARIANT: re-encoded queries follow DRF's `replace_query_param` /
//! `remove_query_param`: keys sorted, the values of one key in their original
//! order, `quote_plus` escaping. Pagination links are built only that way.

/// One parsed query string: `(key, value)` pairs in their original order.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueryPairs {
    pairs: Vec<(String, String)>,
}

impl QueryPairs {
    /// Parses a raw query string (without the leading `?`).
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|part| !part.is_empty())
            .map(|part| match part.split_once('=') {
                Some((key, value)) => (decode(key), decode(value)),
                None => (decode(part), String::new()),
            })
            .collect();
        Self { pairs }
    }

    /// Every value of `key`, in order (Django's `QueryDict.getlist`).
    pub(crate) fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value of `key` (Django's `QueryDict.__getitem__`).
    pub(crate) fn last(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Each distinct key with its last value, in order of first appearance
    /// (how a form body reaches a DRF serializer).
    pub(crate) fn last_values(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (key, value) in &self.pairs {
            match out.iter_mut().find(|(k, _)| k == key) {
                Some(entry) => entry.1.clone_from(value),
                None => out.push((key.clone(), value.clone())),
            }
        }
        out
    }

    /// The query with `key` set to the single `value` (or removed when `None`),
    /// encoded with sorted keys.
    pub(crate) fn with(&self, key: &str, value: Option<&str>) -> String {
        let mut keys: Vec<&str> = Vec::new();
        for (k, _) in &self.pairs {
            if k != key && !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
        if value.is_some() {
            keys.push(key);
        }
        keys.sort_unstable();
        let mut out = Vec::new();
        for k in keys {
            if k == key {
                if let Some(v) = value {
                    out.push(format!("{}={}", quote_plus(k), quote_plus(v)));
                }
                continue;
            }
            for (pk, pv) in &self.pairs {
                if pk == k {
                    out.push(format!("{}={}", quote_plus(pk), quote_plus(pv)));
                }
            }
        }
        out.join("&")
    }
}

fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi * 16 + lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Python's `urllib.parse.quote_plus` with its default safe set.
pub(crate) fn quote_plus(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Why a page could not be served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InvalidPage;

/// One page of a list, with the numbers the `Link` header needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Page {
    pub number: usize,
    pub size: usize,
    pub last: usize,
}

impl Page {
    /// The page `page` of `count` items with the page size asked by `page_size`.
    ///
    /// Mirrors DRF's `PageNumberPagination` with `page_size = 10`,
    /// `max_page_size = 300`: a page size that is not a positive integer falls
    /// back to the default; `page=last` is the last page; page 1 of an empty
    /// list exists; any other page outside the range is invalid.
    pub(crate) fn select(
        count: usize,
        page: Option<&str>,
        page_size: Option<&str>,
    ) -> Result<Page, InvalidPage> {
        const DEFAULT: usize = 10;
        const MAX: usize = 300;
        let size = page_size
            .and_then(|raw| raw.trim().parse::<i64>().ok())
            .filter(|n| *n > 0)
            .map(|n| usize::try_from(n).unwrap_or(MAX).min(MAX))
            .unwrap_or(DEFAULT);
        let last = count.div_ceil(size).max(1);
        let number = match page {
            None => 1,
            Some("last") => last,
            Some(raw) => {
                let n = raw.trim().parse::<i64>().map_err(|_| InvalidPage)?;
                usize::try_from(n).map_err(|_| InvalidPage)?
            }
        };
        if number < 1 || number > last {
            return Err(InvalidPage);
        }
        Ok(Page { number, size, last })
    }

    /// The index range of this page's items.
    pub(crate) fn range(&self, count: usize) -> std::ops::Range<usize> {
        let start = (self.number - 1) * self.size;
        start.min(count)..(start + self.size).min(count)
    }

    /// The `Link` header value: `first`, `prev`, `next`, `last`, in that order,
    /// `prev`/`next` only when they exist. `base_path` is the absolute URL
    /// without its query.
    pub(crate) fn link_header(&self, base_path: &str, query: &QueryPairs) -> String {
        let url = |page: usize| {
            let q = if page == 1 {
                query.with("page", None)
            } else {
                query.with("page", Some(&page.to_string()))
            };
            if q.is_empty() {
                base_path.to_string()
            } else {
                format!("{base_path}?{q}")
            }
        };
        let mut links = vec![format!("<{}>; rel=\"first\"", url(1))];
        if self.number > 1 {
            links.push(format!("<{}>; rel=\"prev\"", url(self.number - 1)));
        }
        if self.number < self.last {
            links.push(format!("<{}>; rel=\"next\"", url(self.number + 1)));
        }
        links.push(format!("<{}>; rel=\"last\"", url(self.last)));
        links.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_parse_qsl() {
        let q = QueryPairs::parse(Some("state=a&state=b+c&x&field=%75uid&bad=%zz"));
        assert_eq!(q.all("state"), vec!["a", "b c"]);
        assert_eq!(q.last("x"), Some(""));
        assert_eq!(q.last("field"), Some("uuid"));
        assert_eq!(q.last("bad"), Some("%zz"));
    }

    #[test]
    fn re_encodes_sorted_with_page_replaced() {
        let q = QueryPairs::parse(Some("state=b&page=2&field=uuid&state=a"));
        assert_eq!(
            q.with("page", Some("3")),
            "field=uuid&page=3&state=b&state=a"
        );
        assert_eq!(q.with("page", None), "field=uuid&state=b&state=a");
    }

    #[test]
    fn pages_follow_drf() {
        assert_eq!(
            Page::select(25, Some("3"), Some("10")),
            Ok(Page {
                number: 3,
                size: 10,
                last: 3
            })
        );
        assert_eq!(Page::select(25, Some("4"), Some("10")), Err(InvalidPage));
        assert_eq!(Page::select(25, Some("0"), None), Err(InvalidPage));
        assert_eq!(Page::select(25, Some("x"), None), Err(InvalidPage));
        assert_eq!(
            Page::select(0, None, None),
            Ok(Page {
                number: 1,
                size: 10,
                last: 1
            })
        );
        assert_eq!(
            Page::select(1000, None, Some("5000")).map(|p| p.size),
            Ok(300)
        );
        assert_eq!(Page::select(1000, None, Some("0")).map(|p| p.size), Ok(10));
        assert_eq!(
            Page::select(25, Some("last"), None).map(|p| p.number),
            Ok(3)
        );
    }
}
