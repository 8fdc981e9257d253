//! FoodReasonSeg (FoodLMM) in its native layout, and the FoodReasonSeg-Single construction
//! (METHOD §7).
//!
//! ```text
//! root/category_id.txt                     "<id>\t<name>" per line (FoodSeg103)
//! root/FoodReasonSeg_{train,test}.json     [{dish_id, conversations: [{form, value}]}]
//! root/Images/img_dir/{train,test}/<dish_id>.jpg
//! root/Images/ann_dir/{train,test}/<dish_id>.png   pixel = class id
//! ```
//! An answer names each target as `ClassName [SEGn]` (optionally `{ClassName} [SEGn]`); the class
//! is the longest known name or plural form (`s`, `es`, `y`→`ies`) that ends right before the
//! `[SEG` token. A question's answer turns are the answer turns up to the next question.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::imageio::{self, ImageLimits};
use crate::manifest::{ManifestRecord, MaskSource, Split};

/// Class ids that never become targets: background, "other ingredients", ignore.
pub const EXCLUDED_CLASSES: [u8; 3] = [0, 103, 255];

/// What to do with a target name that matches no class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownNamePolicy {
    /// Stop with an error naming the dish id and the name.
    #[default]
    Fail,
    /// Drop the target and count it.
    Skip,
}

/// One conversation turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// `"question"` or `"answer"`.
    #[serde(alias = "from")]
    pub form: String,
    /// The text.
    pub value: String,
}

/// One FoodReasonSeg entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dish {
    /// FoodSeg103 image id (file stem).
    pub dish_id: String,
    /// Alternating questions and answers.
    pub conversations: Vec<Turn>,
}

/// The class table from `category_id.txt`, with plural surface forms.
#[derive(Debug, Clone, Default)]
pub struct Categories {
    names: BTreeMap<u8, String>,
    /// Lower-case surface form → class id.
    forms: BTreeMap<String, u8>,
}

impl Categories {
    /// Parse `category_id.txt`: `<id><whitespace><name>` per line.
    pub fn parse(text: &str, path: &Path) -> Result<Categories> {
        let mut cats = Categories::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: String| Error::Parse {
                path: path.to_owned(),
                line: i + 1,
                message,
            };
            let (id, name) = line
                .split_once(|c: char| c.is_whitespace())
                .ok_or_else(|| err(format!("expected \"<id> <name>\", found {line:?}")))?;
            let id: u8 = id
                .parse()
                .map_err(|_| err(format!("expected a class id 0..=255, found {id:?}")))?;
            let name = name.trim().to_owned();
            if name.is_empty() {
                return Err(err(format!("class {id} has an empty name")));
            }
            if let Some(old) = cats.names.insert(id, name.clone()) {
                return Err(err(format!(
                    "class id {id} given twice ({old:?}, {name:?})"
                )));
            }
            for form in surface_forms(&name) {
                cats.forms.entry(form).or_insert(id);
            }
        }
        Ok(cats)
    }

    /// Read and parse a `category_id.txt` file.
    pub fn read(path: &Path) -> Result<Categories> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Categories::parse(&text, path)
    }

    /// Name of a class id.
    pub fn name(&self, id: u8) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// Class id of a name or plural form (case-insensitive).
    pub fn resolve(&self, name: &str) -> Option<u8> {
        self.forms.get(&name.trim().to_lowercase()).copied()
    }

    /// The longest known surface form that ends `text` at a word boundary.
    fn resolve_suffix(&self, text: &str) -> Option<u8> {
        let lower = text.trim_end().to_lowercase();
        self.forms
            .iter()
            .filter(|(form, _)| {
                lower.ends_with(form.as_str())
                    && lower[..lower.len() - form.len()]
                        .chars()
                        .next_back()
                        .is_none_or(|c| !c.is_alphanumeric())
            })
            .max_by_key(|(form, _)| form.len())
            .map(|(_, &id)| id)
    }

    /// All `(id, name)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &str)> {
        self.names.iter().map(|(&id, n)| (id, n.as_str()))
    }
}

/// A name and the plural spellings tolerated for it (lower-case): `x`, `xs`, `xes`, `y`→`ies`.
pub fn surface_forms(name: &str) -> Vec<String> {
    let n = name.trim().to_lowercase();
    let mut forms = vec![n.clone(), format!("{n}s"), format!("{n}es")];
    if let Some(stem) = n.strip_suffix('y') {
        forms.push(format!("{stem}ies"));
    }
    forms
}

/// Target names in an answer: for each `[SEG…]` token, the name just before it.
/// Returns `(name text for messages, resolved class)`.
fn answer_targets(answer: &str, cats: &Categories) -> Vec<(String, Option<u8>)> {
    let mut out = Vec::new();
    let mut rest = answer;
    let mut consumed = 0usize;
    while let Some(pos) = rest.find("[SEG") {
        let before = &answer[..consumed + pos];
        let before_trim = before.trim_end();
        let (shown, id) = if let Some(inner) = before_trim.strip_suffix('}') {
            let name = inner.rsplit_once('{').map_or(inner, |(_, n)| n);
            (name.to_owned(), cats.resolve(name))
        } else {
            let words: Vec<&str> = before_trim.split_whitespace().collect();
            let shown = words[words.len().saturating_sub(3)..].join(" ");
            (shown, cats.resolve_suffix(before_trim))
        };
        out.push((shown, id));
        // Skip `[SEG`, its digits and the closing `]` if present (a missing `]` must not swallow
        // the rest of the answer).
        let after = &rest[pos + 4..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let skip = 4 + digits + usize::from(after[digits..].starts_with(']'));
        consumed += pos + skip;
        rest = &answer[consumed..];
    }
    out
}

/// Counters of the FoodReasonSeg-Single construction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvertStats {
    /// Dishes read.
    pub dishes: usize,
    /// Questions seen.
    pub questions: usize,
    /// Samples produced.
    pub samples: usize,
    /// Target names that matched no class (skipped under [`UnknownNamePolicy::Skip`]).
    pub unknown_names: usize,
    /// Targets naming class 0, 103 or 255.
    pub excluded_targets: usize,
    /// Targets whose class has no pixel in the dish's label map.
    pub empty_targets: usize,
    /// Questions dropped because no target was left.
    pub questions_without_targets: usize,
}

/// Options of the FoodReasonSeg reader.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Unknown-name policy.
    pub unknown_names: UnknownNamePolicy,
    /// Image size limits.
    pub limits: ImageLimits,
}

/// A FoodReasonSeg root directory.
#[derive(Debug, Clone)]
pub struct FoodReasonSeg {
    root: PathBuf,
    categories: Categories,
}

fn split_dir(split: Split) -> Result<&'static str> {
    match split {
        Split::Train => Ok("train"),
        Split::Test => Ok("test"),
        // FoodLMM ships train and test only; the synthetic world adds val in the same layout.
        Split::Val => Ok("val"),
    }
}

impl FoodReasonSeg {
    /// Open a dataset root (reads `category_id.txt`).
    pub fn open(root: &Path) -> Result<FoodReasonSeg> {
        let categories = Categories::read(&root.join("category_id.txt"))?;
        Ok(FoodReasonSeg {
            root: root.to_owned(),
            categories,
        })
    }

    /// The class table.
    pub fn categories(&self) -> &Categories {
        &self.categories
    }

    /// Image path of a dish, relative to the root.
    pub fn image_path(split: Split, dish_id: &str) -> Result<PathBuf> {
        Ok(PathBuf::from(format!(
            "Images/img_dir/{}/{dish_id}.jpg",
            split_dir(split)?
        )))
    }

    /// Label-map path of a dish, relative to the root.
    pub fn ann_path(split: Split, dish_id: &str) -> Result<PathBuf> {
        Ok(PathBuf::from(format!(
            "Images/ann_dir/{}/{dish_id}.png",
            split_dir(split)?
        )))
    }

    /// Read `FoodReasonSeg_{split}.json`.
    pub fn read_dishes(&self, split: Split) -> Result<Vec<Dish>> {
        let path = self
            .root
            .join(format!("FoodReasonSeg_{}.json", split_dir(split)?));
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Parse {
            path,
            line: e.line(),
            message: format!("expected a list of {{dish_id, conversations}}: {e}"),
        })
    }

    /// FoodReasonSeg-Single: one record per question, training targets = every class named in
    /// any of its answer turns (one mask source per class), evaluation GT = the classes of its
    /// first answer turn. Images and label maps are opened to check they exist, fit the limits
    /// and match in size; errors name the dish id.
    pub fn single(
        &self,
        split: Split,
        opts: &ReadOptions,
    ) -> Result<(Vec<ManifestRecord>, ConvertStats)> {
        let mut stats = ConvertStats::default();
        let mut records = Vec::new();
        for dish in self.read_dishes(split)? {
            stats.dishes += 1;
            self.dish_records(split, &dish, opts, &mut stats, &mut records)
                .map_err(|e| e.in_sample(format!("dish {}", dish.dish_id)))?;
        }
        Ok((records, stats))
    }

    fn dish_records(
        &self,
        split: Split,
        dish: &Dish,
        opts: &ReadOptions,
        stats: &mut ConvertStats,
        records: &mut Vec<ManifestRecord>,
    ) -> Result<()> {
        let image = FoodReasonSeg::image_path(split, &dish.dish_id)?;
        let ann = FoodReasonSeg::ann_path(split, &dish.dish_id)?;
        let (iw, ih) = imageio::image_dimensions(&self.root.join(&image), &opts.limits)?;
        let labels = imageio::read_label_map(&self.root.join(&ann), &opts.limits)?;
        if labels.dimensions() != (iw, ih) {
            return Err(Error::SizeMismatch {
                what: format!("label map {}", ann.display()),
                expected_w: iw,
                expected_h: ih,
                found_w: labels.width(),
                found_h: labels.height(),
            });
        }
        let mut present = [false; 256];
        for p in labels.pixels() {
            present[usize::from(p[0])] = true;
        }
        // Group turns: each question owns the answers up to the next question.
        let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
        for turn in &dish.conversations {
            match turn.form.as_str() {
                "question" => groups.push((turn.value.as_str(), Vec::new())),
                "answer" => match groups.last_mut() {
                    Some(g) => g.1.push(turn.value.as_str()),
                    None => {
                        return Err(Error::Dataset(
                            "conversation starts with an answer, expected a question".to_owned(),
                        ));
                    }
                },
                other => {
                    return Err(Error::Dataset(format!(
                        "turn form must be \"question\" or \"answer\", found {other:?}"
                    )));
                }
            }
        }
        for (qi, (question, answers)) in groups.iter().enumerate() {
            stats.questions += 1;
            let mut train: Vec<u8> = Vec::new();
            let mut eval: Vec<u8> = Vec::new();
            for (ai, answer) in answers.iter().enumerate() {
                for (name, id) in answer_targets(answer, &self.categories) {
                    let Some(id) = id else {
                        match opts.unknown_names {
                            UnknownNamePolicy::Fail => {
                                return Err(Error::Dataset(format!(
                                    "question {qi}: target name {name:?} matches no class of category_id.txt"
                                )));
                            }
                            UnknownNamePolicy::Skip => {
                                stats.unknown_names += 1;
                                continue;
                            }
                        }
                    };
                    if EXCLUDED_CLASSES.contains(&id) {
                        stats.excluded_targets += 1;
                        continue;
                    }
                    if !present[usize::from(id)] {
                        stats.empty_targets += 1;
                        continue;
                    }
                    if !train.contains(&id) {
                        train.push(id);
                    }
                    if ai == 0 && !eval.contains(&id) {
                        eval.push(id);
                    }
                }
            }
            if train.is_empty() {
                stats.questions_without_targets += 1;
                continue;
            }
            let names = train
                .iter()
                .map(|&id| self.categories.name(id).unwrap_or_default().to_owned())
                .collect();
            records.push(ManifestRecord {
                id: format!("{}-q{qi}", dish.dish_id),
                split,
                image: image.clone(),
                question: clean_question(question),
                masks: train
                    .iter()
                    .map(|&id| MaskSource::Label {
                        label_png: ann.clone(),
                        classes: vec![id],
                    })
                    .collect(),
                eval_masks: Some(vec![MaskSource::Label {
                    label_png: ann.clone(),
                    classes: eval,
                }]),
                target_names: names,
                objects: None,
            });
            stats.samples += 1;
        }
        Ok(())
    }
}

/// Strip the `<image>` placeholder FoodLMM puts before the first question.
fn clean_question(q: &str) -> String {
    q.replace("<image>", "").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cats() -> Categories {
        let text = "0\tbackground\n1\tcandy\n5\tfrench fries\n6\tfries\n7\tstrawberry\n8\ttomato\n103\tother ingredients\n";
        Categories::parse(text, Path::new("category_id.txt")).unwrap()
    }

    #[test]
    fn plural_and_longest_name_resolution() {
        let c = cats();
        assert_eq!(c.resolve("Strawberries"), Some(7));
        assert_eq!(c.resolve("tomatoes"), Some(8));
        assert_eq!(c.resolve("candys"), Some(1));
        let t = answer_targets(
            "Eat the French Fries [SEG0], some strawberries [SEG1] and {tomato} [SEG2]; not the beef [SEG3].",
            &c,
        );
        let ids: Vec<_> = t.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids, vec![Some(5), Some(7), Some(8), None]);
        assert_eq!(t[3].0, "not the beef");
        // Word boundary: "potomato" is not "tomato".
        assert_eq!(answer_targets("potomato [SEG]", &c)[0].1, None);
    }

    proptest::proptest! {
        #[test]
        fn answer_parsing_never_panics(text in "(\\PC|\\[SEG[0-9]?\\]?|[{}]| ){0,60}") {
            let c = cats();
            let n = text.matches("[SEG").count();
            proptest::prop_assert_eq!(answer_targets(&text, &c).len(), n);
        }
    }

    #[test]
    fn category_errors_name_the_line() {
        let err = Categories::parse("1 a\nx b\n", Path::new("c.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.txt:2:"), "{err}");
        assert!(Categories::parse("1 a\n1 b\n", Path::new("c.txt")).is_err());
    }
}
