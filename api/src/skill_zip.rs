//! A skill folder uploaded as a zip archive (`POST /api/v1/skills/upload` with
//! `Content-Type: application/zip`).
//!
//! The archive is untrusted: every limit of a skill folder is checked on the bytes
//! actually inflated, never on the sizes the archive declares (a zip bomb declares
//! little), and paths are checked by the same rules as any other upload.

use std::io::Read;

use flowforge_domain::skill::{MAX_FILE_BYTES, MAX_FILES, MAX_TOTAL_BYTES, SkillFile};

/// What is wrong with an archive, with the field the API names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipError {
    pub field: String,
    pub message: String,
}

fn refused(field: impl Into<String>, message: impl Into<String>) -> ZipError {
    ZipError {
        field: field.into(),
        message: message.into(),
    }
}

/// Entries that are not part of anyone's skill: folders, and what archivers add.
fn is_noise(path: &str) -> bool {
    path.ends_with('/')
        || path.starts_with("__MACOSX/")
        || path.rsplit('/').next() == Some(".DS_Store")
}

/// The skill folder's files, and the name of the one folder they were wrapped in (most
/// archives of a folder hold `<folder>/SKILL.md`), if they were.
pub fn files_in_zip(bytes: &[u8]) -> Result<(Vec<SkillFile>, Option<String>), ZipError> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| refused("body", format!("not a zip archive: {e}")))?;
    let mut files = Vec::new();
    let mut total = 0usize;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| refused("body", format!("entry {index} cannot be read: {e}")))?;
        let path = entry.name().to_owned();
        if is_noise(&path) {
            continue;
        }
        if files.len() == MAX_FILES {
            return Err(refused("files", format!("1 to {MAX_FILES} files")));
        }
        let field = format!("files[{}]", files.len());
        let mut contents = Vec::new();
        (&mut entry)
            .take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut contents)
            .map_err(|e| refused(&field, format!("`{path}` cannot be inflated: {e}")))?;
        if contents.len() > MAX_FILE_BYTES {
            return Err(refused(
                format!("{field}.contents"),
                format!("`{path}` is larger than {MAX_FILE_BYTES} bytes"),
            ));
        }
        total += contents.len();
        if total > MAX_TOTAL_BYTES {
            return Err(refused(
                "files",
                format!("more than {MAX_TOTAL_BYTES} bytes in all"),
            ));
        }
        let contents = String::from_utf8(contents).map_err(|_| {
            refused(
                format!("{field}.contents"),
                format!("`{path}` is not UTF-8 text"),
            )
        })?;
        files.push(SkillFile { path, contents });
    }
    Ok(unwrap_folder(files))
}

/// `<folder>/…` for every file and no `SKILL.md` at the top: the folder's own files.
fn unwrap_folder(files: Vec<SkillFile>) -> (Vec<SkillFile>, Option<String>) {
    let folder = files
        .first()
        .and_then(|f| f.path.split_once('/'))
        .map(|(folder, _)| folder.to_owned());
    let Some(folder) = folder else {
        return (files, None);
    };
    let prefix = format!("{folder}/");
    if !files.iter().all(|f| f.path.starts_with(&prefix)) {
        return (files, None);
    }
    let files = files
        .into_iter()
        .map(|f| SkillFile {
            path: f.path[prefix.len()..].to_owned(),
            contents: f.contents,
        })
        .collect();
    (files, Some(folder))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (path, contents) in entries {
            if path.ends_with('/') {
                writer.add_directory(*path, options).unwrap();
            } else {
                writer.start_file(*path, options).unwrap();
                writer.write_all(contents).unwrap();
            }
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn a_wrapped_folder_is_unwrapped_and_archiver_noise_skipped() {
        let bytes = zip_of(&[
            ("notes/", b""),
            ("notes/SKILL.md", b"---\nname: notes\n---\n"),
            ("notes/references/style.md", b"Short."),
            ("__MACOSX/notes/._SKILL.md", b"junk"),
            ("notes/.DS_Store", b"junk"),
        ]);
        let (files, folder) = files_in_zip(&bytes).unwrap();
        assert_eq!(folder.as_deref(), Some("notes"));
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["SKILL.md", "references/style.md"]);
        assert_eq!(files[1].contents, "Short.");
    }

    #[test]
    fn files_at_the_top_stay_as_they_are() {
        let bytes = zip_of(&[("SKILL.md", b"x"), ("scripts/run.sh", b"echo")]);
        let (files, folder) = files_in_zip(&bytes).unwrap();
        assert_eq!(folder, None);
        assert_eq!(files.len(), 2);
    }

    #[test]
    fn a_zip_bomb_is_stopped_at_the_file_limit_whatever_it_declares() {
        // 64 MiB of zeros deflate to a few dozen KiB.
        let bomb = vec![0u8; 64 * 1024 * 1024];
        let bytes = zip_of(&[("SKILL.md", b"x"), ("big.txt", &bomb)]);
        assert!(bytes.len() < 1024 * 1024);
        let error = files_in_zip(&bytes).unwrap_err();
        assert_eq!(error.field, "files[1].contents");
    }

    #[test]
    fn too_much_in_all_too_many_files_binary_and_garbage_are_refused() {
        let quarter = vec![b'a'; MAX_FILE_BYTES];
        let five: Vec<(String, &[u8])> = (0..5)
            .map(|i| (format!("f{i}.md"), quarter.as_slice()))
            .collect();
        let entries: Vec<(&str, &[u8])> = five.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        assert_eq!(files_in_zip(&zip_of(&entries)).unwrap_err().field, "files");

        let many: Vec<String> = (0..=MAX_FILES).map(|i| format!("f{i}.md")).collect();
        let entries: Vec<(&str, &[u8])> = many.iter().map(|p| (p.as_str(), &b"x"[..])).collect();
        assert_eq!(files_in_zip(&zip_of(&entries)).unwrap_err().field, "files");

        let binary = zip_of(&[("SKILL.md", b"x"), ("logo.png", &[0xff, 0xfe, 0x00])]);
        assert_eq!(
            files_in_zip(&binary).unwrap_err().field,
            "files[1].contents"
        );
        assert_eq!(files_in_zip(b"not a zip").unwrap_err().field, "body");
    }
}
