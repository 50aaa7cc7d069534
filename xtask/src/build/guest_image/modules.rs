//! Which kernel modules go into the guest and in which order `/init` loads them. Debian's
//! kernel package ships no `modules.dep`, and the dependencies change between point releases
//! (in 6.1.0-57 `virtio` started to need `virtio_ring`), so the order is derived from what
//! each module declares itself: the `depends=` entry of its `.modinfo` ELF section, sorted
//! topologically. Modules the kernel has built in (`modules.builtin`) need no file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection};

/// A module's name as the kernel knows it: dashes in file names become underscores
/// (`ne2k-pci.ko` is `ne2k_pci`).
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Why no load order exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderError {
    /// `module` is needed (by `needed_by`, or as a root when `None`) but the package has no
    /// file for it and the kernel does not have it built in.
    Missing {
        /// The module that is not there.
        module: String,
        /// The module that declared the dependency, if any.
        needed_by: Option<String>,
    },
    /// The modules depend on each other in a circle (listed in dependency order, the first
    /// repeated at the end).
    Cycle(Vec<String>),
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing {
                module,
                needed_by: Some(by),
            } => write!(
                f,
                "module {module} (a dependency of {by}) is neither a file in the package nor built in"
            ),
            Self::Missing {
                module,
                needed_by: None,
            } => write!(
                f,
                "module {module} is neither a file in the package nor built in"
            ),
            Self::Cycle(path) => write!(
                f,
                "modules depend on each other in a circle: {}",
                path.join(" -> ")
            ),
        }
    }
}

impl std::error::Error for OrderError {}

/// The order in which to load `roots` and everything they depend on: every module after its
/// dependencies, built-in modules left out, each module once. `depends` gives each module's
/// declared dependencies (`None`: no such module file); `builtin` the modules compiled into
/// the kernel. Roots keep their given order where dependencies allow.
pub fn load_order<'a>(
    roots: &[&str],
    depends: impl Fn(&str) -> Option<&'a [String]>,
    builtin: &BTreeSet<String>,
) -> Result<Vec<String>, OrderError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<String, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    // Depth-first, iterative: (module, who needs it, index of the next dependency to visit).
    for root in roots {
        let root = canonical(root);
        let mut stack: Vec<(String, Option<String>, usize)> = vec![(root, None, 0)];
        while let Some((module, needed_by, next)) = stack.pop() {
            if next == 0 {
                match marks.get(&module) {
                    Some(Mark::Done) => continue,
                    Some(Mark::Visiting) => {
                        let start = stack.iter().position(|(m, _, _)| *m == module).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[start..].iter().map(|(m, _, _)| m.clone()).collect();
                        cycle.push(module);
                        return Err(OrderError::Cycle(cycle));
                    }
                    None => {}
                }
                if builtin.contains(&module) {
                    marks.insert(module, Mark::Done);
                    continue;
                }
                if depends(&module).is_none() {
                    return Err(OrderError::Missing { module, needed_by });
                }
                marks.insert(module.clone(), Mark::Visiting);
            }
            let deps = depends(&module).unwrap_or_default();
            match deps.get(next) {
                Some(dep) => {
                    let dep = canonical(dep);
                    stack.push((module.clone(), needed_by, next + 1));
                    stack.push((dep, Some(module), 0));
                }
                None => {
                    marks.insert(module.clone(), Mark::Done);
                    order.push(module);
                }
            }
        }
    }
    Ok(order)
}

/// The `depends=` list of a module file's `.modinfo` section (empty when it declares none).
pub fn declared_depends(ko: &[u8]) -> Result<Vec<String>> {
    let file = object::File::parse(ko).context("not an ELF object")?;
    let section = file
        .section_by_name(".modinfo")
        .context("no .modinfo section")?;
    let data = section.data().context("unreadable .modinfo section")?;
    let mut depends = Vec::new();
    for entry in data.split(|&b| b == 0) {
        if let Some(list) = entry.strip_prefix(b"depends=") {
            let list = std::str::from_utf8(list).context(".modinfo depends= is not UTF-8")?;
            depends.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(canonical),
            );
        }
    }
    Ok(depends)
}

/// The modules of one kernel package, as extracted under `lib/modules/<release>/`.
pub struct ModuleTree {
    /// The kernel release (`uname -r`), the directory's name.
    pub release: String,
    /// Every module file by canonical name.
    files: BTreeMap<String, PathBuf>,
    /// Modules compiled into the kernel.
    builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Indexes `lib_modules` (the package's `lib/modules`, which holds one release).
    pub fn open(lib_modules: &Path) -> Result<Self> {
        let mut releases: Vec<PathBuf> = std::fs::read_dir(lib_modules)
            .with_context(|| format!("reading {}", lib_modules.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        let dir = match releases.len() {
            1 => releases.remove(0),
            n => bail!(
                "{} holds {n} kernel releases, expected exactly one",
                lib_modules.display()
            ),
        };
        let release = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("kernel release directory name is not UTF-8")?
            .to_string();
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(stem) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    files.insert(canonical(stem), p.clone());
                }
            }
        }
        let builtin = match std::fs::read_to_string(dir.join("modules.builtin")) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.rsplit('/').next())
                .filter_map(|n| n.strip_suffix(".ko"))
                .map(canonical)
                .collect(),
            Err(_) => BTreeSet::new(),
        };
        if files.is_empty() {
            bail!(
                "no uncompressed .ko files under {} (compressed modules are not supported)",
                dir.display()
            );
        }
        Ok(Self {
            release,
            files,
            builtin,
        })
    }

    /// The module files to load for `roots`, in load order: `(canonical name, file)`.
    pub fn resolve(&self, roots: &[&str]) -> Result<Vec<(String, PathBuf)>> {
        // Read the .modinfo of every module reachable from the roots.
        let mut depends: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut todo: Vec<String> = roots.iter().map(|r| canonical(r)).collect();
        while let Some(module) = todo.pop() {
            if depends.contains_key(&module) {
                continue;
            }
            let Some(file) = self.files.get(&module) else {
                continue;
            };
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let deps = declared_depends(&bytes)
                .with_context(|| format!("reading the .modinfo of {}", file.display()))?;
            todo.extend(deps.iter().cloned());
            depends.insert(module, deps);
        }
        let order = load_order(roots, |m| depends.get(m).map(Vec::as_slice), &self.builtin)?;
        Ok(order
            .into_iter()
            .map(|m| {
                let file = self.files[&m].clone();
                (m, file)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(m, deps)| (m.to_string(), deps.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    fn order(
        roots: &[&str],
        g: &BTreeMap<String, Vec<String>>,
        builtin: &[&str],
    ) -> Result<Vec<String>, OrderError> {
        let builtin = builtin.iter().map(|s| s.to_string()).collect();
        load_order(roots, |m| g.get(m).map(Vec::as_slice), &builtin)
    }

    /// The NIC modules of linux-image-6.1.0-57-686 as their .modinfo declares them.
    fn debian_6_1_0_57() -> BTreeMap<String, Vec<String>> {
        graph(&[
            ("virtio", &["virtio_ring"]),
            ("virtio_ring", &[]),
            ("virtio_pci_modern_dev", &[]),
            ("virtio_pci_legacy_dev", &[]),
            (
                "virtio_pci",
                &[
                    "virtio_pci_modern_dev",
                    "virtio_pci_legacy_dev",
                    "virtio_ring",
                    "virtio",
                ],
            ),
            ("failover", &[]),
            ("net_failover", &["failover"]),
            ("virtio_net", &["net_failover", "virtio", "virtio_ring"]),
            ("8390", &[]),
            ("ne2k_pci", &["8390"]),
        ])
    }

    fn position(order: &[String], m: &str) -> usize {
        order.iter().position(|x| x == m).unwrap()
    }

    #[test]
    fn every_module_after_its_dependencies_and_once() {
        let g = debian_6_1_0_57();
        let o = order(&["virtio_pci", "virtio_net", "ne2k-pci"], &g, &[]).unwrap();
        assert_eq!(o.len(), g.len(), "{o:?}");
        let unique: BTreeSet<&String> = o.iter().collect();
        assert_eq!(unique.len(), o.len());
        for (m, deps) in &g {
            for d in deps {
                assert!(position(&o, d) < position(&o, m), "{d} after {m} in {o:?}");
            }
        }
        assert_eq!(o.last().unwrap(), "ne2k_pci");
    }

    #[test]
    fn exact_order_is_depth_first_in_declared_order() {
        let g = graph(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[]), ("d", &[])]);
        assert_eq!(order(&["d", "a"], &g, &[]).unwrap(), ["d", "c", "b", "a"]);
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let g = graph(&[
            ("virtio_net", &["virtio", "net_failover"]),
            ("net_failover", &[]),
        ]);
        assert_eq!(
            order(&["virtio_net"], &g, &["virtio"]).unwrap(),
            ["net_failover", "virtio_net"]
        );
    }

    #[test]
    fn a_missing_dependency_names_the_module_and_who_needs_it() {
        let mut g = debian_6_1_0_57();
        g.remove("virtio_ring");
        let err = order(&["virtio_net"], &g, &[]).unwrap_err();
        assert_eq!(
            err,
            OrderError::Missing {
                module: "virtio_ring".into(),
                needed_by: Some("virtio".into())
            }
        );
        assert!(err
            .to_string()
            .contains("virtio_ring (a dependency of virtio)"));
    }

    #[test]
    fn a_missing_root_is_named() {
        let g = debian_6_1_0_57();
        let err = order(&["e1000"], &g, &[]).unwrap_err();
        assert_eq!(
            err,
            OrderError::Missing {
                module: "e1000".into(),
                needed_by: None
            }
        );
    }

    #[test]
    fn a_cycle_is_reported_with_its_members() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("x", &[])]);
        let err = order(&["x", "a"], &g, &[]).unwrap_err();
        assert_eq!(
            err,
            OrderError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert!(err.to_string().contains("a -> b -> c -> a"));
    }

    #[test]
    fn a_module_depending_on_itself_is_a_cycle() {
        let g = graph(&[("a", &["a"])]);
        assert_eq!(
            order(&["a"], &g, &[]).unwrap_err(),
            OrderError::Cycle(vec!["a".into(), "a".into()])
        );
    }

    #[test]
    fn a_diamond_is_not_a_cycle() {
        let g = graph(&[
            ("top", &["l", "r"]),
            ("l", &["base"]),
            ("r", &["base"]),
            ("base", &[]),
        ]);
        assert_eq!(order(&["top"], &g, &[]).unwrap(), ["base", "l", "r", "top"]);
    }

    /// A minimal ELF relocatable object with a `.modinfo` section holding `modinfo`.
    fn elf_with_modinfo(modinfo: &[u8]) -> Vec<u8> {
        use object::write::{Object as WriteObject, StandardSection};
        let mut obj = WriteObject::new(
            object::BinaryFormat::Elf,
            object::Architecture::I386,
            object::Endianness::Little,
        );
        let _ = obj.section_id(StandardSection::Text);
        let id = obj.add_section(Vec::new(), b".modinfo".to_vec(), object::SectionKind::Data);
        obj.append_section_data(id, modinfo, 1);
        obj.write().unwrap()
    }

    #[test]
    fn depends_are_read_from_the_modinfo_section() {
        let ko = elf_with_modinfo(
            b"license=GPL\0depends=virtio_ring,net-failover\0retpoline=Y\0name=virtio_net\0",
        );
        assert_eq!(
            declared_depends(&ko).unwrap(),
            ["virtio_ring", "net_failover"]
        );
        let none = elf_with_modinfo(b"license=GPL\0depends=\0name=virtio_ring\0");
        assert!(declared_depends(&none).unwrap().is_empty());
    }

    #[test]
    fn a_file_without_modinfo_is_an_error() {
        assert!(declared_depends(b"not an elf").is_err());
    }
}
