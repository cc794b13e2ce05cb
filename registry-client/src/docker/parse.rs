//! Checks and conversions of a block's fields: names, environment, labels, volumes,
//! networks, memory sizes.

use std::collections::BTreeMap;

use super::DockerError;
use super::MIN_MEMORY_BYTES;
use super::engine::Environment;
use block_types::catalog::{MemoryLimit, SwapLimit};
use secrecy::SecretString;

/// Docker's container names: `/?[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub(super) fn check_name(name: &str) -> Result<(), DockerError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let mut chars = bare.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && bare.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(DockerError::new(
            "name",
            format!(
                "{name:?} is not a valid container name; use at least 2 characters of [a-zA-Z0-9_.-], starting with a letter or digit"
            ),
        ))
    }
}

pub(super) fn environment(
    env: &BTreeMap<String, Option<String>>,
) -> Result<Environment, DockerError> {
    let mut vars = Vec::with_capacity(env.len());
    for (key, value) in env {
        // Values may be secret: messages name keys only.
        if key.is_empty() {
            return Err(DockerError::new("env", "a variable has an empty name"));
        }
        if key.contains('=') || key.contains('\0') {
            return Err(DockerError::new(
                "env",
                format!("the variable name {key:?} contains '=' or a NUL byte"),
            ));
        }
        if let Some(value) = value {
            // The value goes into a process environment (`docker run --env KEY`) and the
            // container's, neither of which can hold a NUL byte.
            if value.contains('\0') {
                return Err(DockerError::new(
                    "env",
                    format!("the value of {key:?} contains a NUL byte"),
                ));
            }
            vars.push((key.clone(), SecretString::from(value.as_str())));
        }
    }
    Ok(Environment { vars })
}

pub(super) fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), DockerError> {
    for key in labels.keys() {
        if key.is_empty() {
            return Err(DockerError::new("labels", "a label has an empty key"));
        }
        if key.contains('=') {
            return Err(DockerError::new(
                "labels",
                format!("the label key {key:?} contains '='"),
            ));
        }
    }
    Ok(())
}

/// `host:container` or `host:container:mode`, every part non-empty. A Windows drive
/// (`C:\data:/data`) is part of the host path.
pub(super) fn check_volume(index: usize, volume: &str) -> Result<(), DockerError> {
    let fail = |problem: &str| {
        DockerError::new(
            format!("volumes[{index}]"),
            format!("{volume:?} {problem}; write host:container or host:container:mode"),
        )
    };
    let bytes = volume.as_bytes();
    let drive = bytes.len() >= 3
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && matches!(bytes[2], b'\\' | b'/');
    let rest = if drive { &volume[2..] } else { volume };
    let parts: Vec<&str> = rest.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(fail(if parts.len() < 2 {
            "has no container path"
        } else {
            "has too many ':'"
        }));
    }
    for (part, what) in parts.iter().zip(["host path", "container path", "mode"]) {
        if part.is_empty() {
            return Err(fail(&format!("has an empty {what}")));
        }
    }
    Ok(())
}

/// How a container joins its networks.
pub(super) struct Networks {
    /// `HostConfig.NetworkMode`.
    pub(super) mode: Option<String>,
    /// The endpoint joined at create time.
    pub(super) endpoint: Option<String>,
    /// Networks joined after create.
    pub(super) connect: Vec<String>,
}

pub(super) fn networks(mode: Option<&str>, networks: &[String]) -> Result<Networks, DockerError> {
    for (i, network) in networks.iter().enumerate() {
        if network.trim().is_empty() {
            return Err(DockerError::new(format!("networks[{i}]"), "is empty"));
        }
        if networks[..i].contains(network) {
            return Err(DockerError::new(
                format!("networks[{i}]"),
                format!("{network:?} is listed twice"),
            ));
        }
    }
    match mode {
        Some(mode) => {
            if mode.trim().is_empty() {
                return Err(DockerError::new("network_mode", "is empty"));
            }
            if !networks.is_empty()
                && (mode == "host" || mode == "none" || mode.starts_with("container:"))
            {
                return Err(DockerError::new(
                    "networks",
                    format!(
                        "a container with network_mode {mode:?} cannot join other networks; drop network_mode or the networks"
                    ),
                ));
            }
            Ok(Networks {
                mode: Some(mode.to_owned()),
                endpoint: None,
                connect: networks.to_vec(),
            })
        }
        None => match networks.split_first() {
            Some((first, rest)) => Ok(Networks {
                mode: Some(first.clone()),
                endpoint: Some(first.clone()),
                connect: rest.to_vec(),
            }),
            None => Ok(Networks {
                mode: None,
                endpoint: None,
                connect: Vec::new(),
            }),
        },
    }
}

/// `(Memory, MemorySwap)` in bytes, checked as the Docker daemon checks them.
pub(super) fn memory_limits(
    mem: Option<&MemoryLimit>,
    swap: Option<&SwapLimit>,
) -> Result<(Option<i64>, Option<i64>), DockerError> {
    let memory = match mem {
        None => None,
        Some(MemoryLimit::Bytes(bytes)) => Some(bytes_from_f64("mem_limit", *bytes, false)?),
        Some(MemoryLimit::Text(text)) => Some(parse_bytes("mem_limit", text, false)?),
    };
    let memory_swap = match swap {
        None => None,
        Some(SwapLimit::Bytes(-1)) => Some(-1),
        Some(SwapLimit::Bytes(bytes)) if *bytes < 0 => return Err(negative("memswap_limit", true)),
        Some(SwapLimit::Bytes(bytes)) => Some(*bytes),
        Some(SwapLimit::Text(text)) => Some(parse_bytes("memswap_limit", text, true)?),
    };
    if let Some(memory) = memory
        && memory > 0
        && memory < MIN_MEMORY_BYTES
    {
        return Err(DockerError::new(
            "mem_limit",
            format!(
                "is {memory} bytes; Docker's minimum is 6m ({MIN_MEMORY_BYTES} bytes). A bare number counts bytes: write 512m for 512 MiB"
            ),
        ));
    }
    if let Some(swap) = memory_swap
        && swap > 0
    {
        match memory {
            Some(memory) if memory > 0 && swap < memory => {
                return Err(DockerError::new(
                    "memswap_limit",
                    format!(
                        "is {swap} bytes, less than mem_limit ({memory} bytes); it counts memory plus swap, so it must be at least mem_limit, or -1 for unlimited swap"
                    ),
                ));
            }
            Some(memory) if memory > 0 => {}
            _ => {
                return Err(DockerError::new(
                    "memswap_limit",
                    "needs mem_limit: Docker refuses a memory-plus-swap limit without a memory limit",
                ));
            }
        }
    }
    Ok((memory, memory_swap))
}

pub(super) fn negative(field: &str, swap: bool) -> DockerError {
    DockerError::new(
        field,
        if swap {
            "is negative; -1 (unlimited swap) is the only negative value allowed"
        } else {
            "is negative"
        },
    )
}

/// Whole bytes from a number of bytes: fractions dropped, `-1` allowed for swap.
pub(super) fn bytes_from_f64(field: &str, bytes: f64, swap: bool) -> Result<i64, DockerError> {
    if !bytes.is_finite() {
        return Err(DockerError::new(field, "is not a finite number"));
    }
    if bytes < 0.0 {
        return if swap && bytes == -1.0 {
            Ok(-1)
        } else {
            Err(negative(field, swap))
        };
    }
    let whole = bytes.trunc();
    // 2^63 is the first f64 above i64::MAX.
    if whole >= 9_223_372_036_854_775_808.0 {
        return Err(DockerError::new(field, "is too large"));
    }
    Ok(whole as i64)
}

/// docker-py's `parse_bytes`: a number with an optional unit `b`, `k`, `m` or `g`
/// (1024-based, any case, optionally followed by `b`: `512mb`).
pub(super) fn parse_bytes(field: &str, text: &str, swap: bool) -> Result<i64, DockerError> {
    let hint = "give bytes or a number with a unit b, k, m or g (e.g. 512m, 1.5g)";
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DockerError::new(field, format!("is empty; {hint}")));
    }
    let mut number = trimmed;
    let mut chars = trimmed.chars().rev();
    if let (Some(last), Some(before)) = (chars.next(), chars.next())
        && last.eq_ignore_ascii_case(&'b')
        && before.is_alphabetic()
    {
        number = &trimmed[..trimmed.len() - 1];
    }
    let multiplier: f64 = match number.chars().last() {
        Some(c) if c.is_ascii_digit() || c == '.' => 1.0,
        Some(c) => {
            let multiplier = match c.to_ascii_lowercase() {
                'b' => 1.0,
                'k' => 1024.0,
                'm' => 1024.0 * 1024.0,
                'g' => 1024.0 * 1024.0 * 1024.0,
                _ => {
                    return Err(DockerError::new(
                        field,
                        format!("{text:?} has an unknown unit {c:?}; {hint}"),
                    ));
                }
            };
            number = &number[..number.len() - c.len_utf8()];
            multiplier
        }
        None => 1.0,
    };
    let number = number.trim();
    // Digits, one optional point and a leading minus only: no exponents, inf or NaN.
    let well_formed = {
        let digits = number.strip_prefix('-').unwrap_or(number);
        digits.chars().any(|c| c.is_ascii_digit())
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && digits.matches('.').count() <= 1
    };
    let value: f64 = match number.parse() {
        Ok(value) if well_formed => value,
        _ => {
            return Err(DockerError::new(
                field,
                format!("{text:?} is not a number of bytes; {hint}"),
            ));
        }
    };
    bytes_from_f64(field, value * multiplier, swap)
}
