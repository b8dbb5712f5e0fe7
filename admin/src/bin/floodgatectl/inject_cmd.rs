//! `floodgatectl inject`: reads the manifests (a file, a directory or standard input) and
//! writes them back with the sidecar added; the rewriting itself is `floodgate_admin::inject`.

use crate::args::InjectArgs;
use crate::client::Failure;

/// The manifests of `a` with the sidecar added (notes go to standard error).
pub(crate) fn inject(a: &InjectArgs) -> Result<String, Failure> {
    use std::io::Read;
    let file = a.file.as_deref().unwrap_or("-");
    let mut input = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| Failure(2, format!("cannot read standard input: {e}")))?;
    } else if std::path::Path::new(file).is_dir() {
        // As kubectl: every .yaml/.yml file of the directory (not below it), by name, as one
        // stream.
        let unreadable =
            |e: std::io::Error| Failure(2, format!("-f `{}` cannot be read: {e}", file));
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(file)
            .map_err(unreadable)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Failure(
                2,
                format!("-f `{}`: no .yaml or .yml files in it", file),
            ));
        }
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| Failure(2, format!("`{}` cannot be read: {e}", f.display())))?;
            if !input.is_empty() {
                if !input.ends_with('\n') {
                    input.push('\n');
                }
                input.push_str("---\n");
            }
            input.push_str(&text);
        }
    } else {
        input = std::fs::read_to_string(file)
            .map_err(|e| Failure(2, format!("-f `{}` cannot be read: {e}", file)))?;
    }
    let done = floodgate_admin::inject::inject(&input, &a.how.options())
        .map_err(|e| Failure(5, format!("nothing written: {e}")))?;
    for n in &done.notes {
        eprintln!("floodgatectl inject: {n}");
    }
    Ok(done.output)
}
