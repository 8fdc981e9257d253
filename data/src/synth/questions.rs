//! Reasoning questions about a synthetic scene. Each needs the knowledge table (which food is
//! fried, holds nuts, is a dessert...) and the picture (which foods are there, how many, which is
//! largest). Answers are written FoodReasonSeg-style: `the tomatoes [SEG0]`.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::knowledge::{ALLERGENS, Course, Food, Group, Method};

/// One food class present in a scene.
#[derive(Debug, Clone)]
pub struct Present {
    /// The food.
    pub food: &'static Food,
    /// Visible area (pixels) of each instance.
    pub areas: Vec<u64>,
}

/// A question with its answer turns.
#[derive(Debug, Clone)]
pub struct Qa {
    /// Template name (for stats).
    pub kind: &'static str,
    /// The question.
    pub question: String,
    /// Answer turns: text and the class ids it names (in `[SEGn]` order).
    pub turns: Vec<(String, Vec<u8>)>,
}

fn noun(p: &Present) -> &'static str {
    match (p.areas.len() > 1, p.food.plural) {
        (true, Some(pl)) => pl,
        _ => p.food.name,
    }
}

fn list_targets(targets: &[&Present]) -> String {
    let parts: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, p)| format!("the {} [SEG{i}]", noun(p)))
        .collect();
    match parts.len() {
        0 => String::new(),
        1 => parts[0].clone(),
        n => format!("{} and {}", parts[..n - 1].join(", "), parts[n - 1]),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn count_word(n: usize) -> String {
    [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
    ]
    .get(n)
    .map_or_else(|| n.to_string(), |w| (*w).to_owned())
}

/// Answer turns for `targets`: usually one; when there are several targets, sometimes split over
/// two turns (FoodReasonSeg is multi-turn; FoodReasonSeg-Single merges them for training).
fn turns(targets: Vec<&Present>, reason: &str, rng: &mut ChaCha8Rng) -> Vec<(String, Vec<u8>)> {
    let ids = |ts: &[&Present]| ts.iter().map(|p| p.food.id).collect::<Vec<_>>();
    if targets.len() >= 2 && rng.random_bool(0.35) {
        let (first, rest) = targets.split_at(1);
        vec![
            (
                capitalise(&format!("{} {reason}.", list_targets(first))),
                ids(first),
            ),
            (format!("Also {}.", list_targets(rest)), ids(rest)),
        ]
    } else {
        vec![(
            capitalise(&format!("{} {reason}.", list_targets(&targets))),
            ids(&targets),
        )]
    }
}

fn nutrient(f: &Food, which: usize) -> f32 {
    [f.protein, f.fat, f.sugar, f.fibre][which]
}

const NUTRIENTS: [&str; 4] = ["protein", "fat", "sugar", "fibre"];

fn group_phrase(g: Group) -> &'static str {
    match g {
        Group::Meat => "meat",
        Group::Seafood => "seafood",
        Group::Vegetable => "vegetables",
        Group::Fruit => "fruit",
        Group::Grain => "grain foods",
        Group::Dairy => "dairy",
        Group::Dessert => "sweets",
        Group::Nut => "nuts",
        Group::Egg => "eggs",
        Group::Legume => "soy foods",
    }
}

fn method_word(m: Method) -> &'static str {
    match m {
        Method::Fried => "fried",
        Method::Grilled => "grilled",
        Method::Baked => "baked",
        Method::Boiled => "boiled",
        Method::Steamed => "steamed",
        Method::Raw => "raw",
    }
}

fn course_question(c: Course, place: &str) -> Option<(&'static str, String, &'static str)> {
    match c {
        Course::Dessert => Some((
            "course",
            format!("Which item on the {place} is the dessert?"),
            "is the dessert",
        )),
        Course::Breakfast => Some((
            "course",
            "What here would you eat for breakfast?".to_owned(),
            "is a breakfast food",
        )),
        Course::Main => Some((
            "course",
            format!("Which food on the {place} is the main course?"),
            "is the main course",
        )),
        Course::Starter => Some((
            "course",
            "Which item would be served as a starter?".to_owned(),
            "is a starter",
        )),
        _ => None,
    }
}

/// Try templates in random order until one has a well-defined answer in this scene. A set answer
/// must not be every food present (the question would not discriminate).
pub fn ask(present: &[Present], place: &str, rng: &mut ChaCha8Rng) -> Option<Qa> {
    let mut kinds = [0usize, 1, 2, 3, 4, 5, 6, 7, 8];
    kinds.shuffle(rng);
    for kind in kinds {
        if let Some(qa) = try_kind(kind, present, place, rng) {
            return Some(qa);
        }
    }
    None
}

fn proper_subset(targets: &[&Present], present: &[Present]) -> bool {
    !targets.is_empty() && targets.len() < present.len()
}

fn try_kind(kind: usize, present: &[Present], place: &str, rng: &mut ChaCha8Rng) -> Option<Qa> {
    match kind {
        0 | 1 => {
            // Richest / poorest in a nutrient: the extreme must beat the runner-up clearly.
            let which = rng.random_range(0..4);
            let most = kind == 0;
            let mut sorted: Vec<&Present> = present.iter().collect();
            sorted.sort_by(|a, b| nutrient(a.food, which).total_cmp(&nutrient(b.food, which)));
            if most {
                sorted.reverse();
            }
            let (best, second) = (sorted.first()?, sorted.get(1)?);
            if (nutrient(best.food, which) - nutrient(second.food, which)).abs() < 1.0 {
                return None;
            }
            let n = NUTRIENTS[which];
            let (question, reason) = if most {
                let q = if rng.random_bool(0.5) {
                    format!("Which item on the {place} is richest in {n}?")
                } else {
                    format!("Find the food with the most {n} on this {place}.")
                };
                (
                    q,
                    format!(
                        "has the most {n}, about {} g per 100 g",
                        nutrient(best.food, which)
                    ),
                )
            } else {
                (
                    format!("Which food here has the least {n}?"),
                    format!(
                        "has the least {n}, about {} g per 100 g",
                        nutrient(best.food, which)
                    ),
                )
            };
            Some(Qa {
                kind: if most {
                    "most_nutrient"
                } else {
                    "least_nutrient"
                },
                question,
                turns: turns(vec![*best], &reason, rng),
            })
        }
        2 => {
            let a = ALLERGENS[rng.random_range(0..ALLERGENS.len())];
            let targets: Vec<&Present> = present
                .iter()
                .filter(|p| p.food.allergens.contains(&a))
                .collect();
            if !proper_subset(&targets, present) {
                return None;
            }
            let verb = if targets.len() == 1 && targets[0].areas.len() == 1 {
                "contains"
            } else {
                "contain"
            };
            Some(Qa {
                kind: "allergen",
                question: format!("What should someone allergic to {a} avoid on this {place}?"),
                turns: turns(targets, &format!("{verb} {a}"), rng),
            })
        }
        3 => {
            let course = present[rng.random_range(0..present.len())].food.course;
            let (kind, question, reason) = course_question(course, place)?;
            let targets: Vec<&Present> =
                present.iter().filter(|p| p.food.course == course).collect();
            if !proper_subset(&targets, present) {
                return None;
            }
            Some(Qa {
                kind,
                question,
                turns: turns(targets, reason, rng),
            })
        }
        4 => {
            // Counting: the question states how many instances there are.
            let method = present[rng.random_range(0..present.len())].food.method;
            let targets: Vec<&Present> =
                present.iter().filter(|p| p.food.method == method).collect();
            if !proper_subset(&targets, present) {
                return None;
            }
            let n: usize = targets.iter().map(|p| p.areas.len()).sum();
            let m = method_word(method);
            let question = if n == 1 {
                format!("Find the {m} item.")
            } else {
                format!("Find the {} {m} items.", count_word(n))
            };
            Some(Qa {
                kind: "method_count",
                question,
                turns: turns(
                    targets,
                    &format!("{} {m}", if n == 1 { "is" } else { "are" }),
                    rng,
                ),
            })
        }
        5 => {
            let cuisine = present[rng.random_range(0..present.len())].food.cuisine;
            let targets: Vec<&Present> = present
                .iter()
                .filter(|p| p.food.cuisine == cuisine)
                .collect();
            if !proper_subset(&targets, present) {
                return None;
            }
            Some(Qa {
                kind: "cuisine",
                question: format!(
                    "Which food on the {place} comes from {} cuisine?",
                    capitalise(cuisine)
                ),
                turns: turns(
                    targets,
                    &format!(
                        "{} {} cuisine",
                        if targets_plural(present, cuisine) {
                            "belong to"
                        } else {
                            "belongs to"
                        },
                        capitalise(cuisine)
                    ),
                    rng,
                ),
            })
        }
        6 => {
            let group = present[rng.random_range(0..present.len())].food.group;
            let targets: Vec<&Present> = present.iter().filter(|p| p.food.group == group).collect();
            if !proper_subset(&targets, present) {
                return None;
            }
            let g = group_phrase(group);
            Some(Qa {
                kind: "group",
                question: format!("Point out the {g} on the {place}."),
                turns: turns(targets, &format!("count as {g}"), rng),
            })
        }
        7 => {
            let targets: Vec<&Present> = present
                .iter()
                .filter(|p| matches!(p.food.group, Group::Meat | Group::Seafood))
                .collect();
            if !proper_subset(&targets, present) {
                return None;
            }
            Some(Qa {
                kind: "vegetarian",
                question: "What would you remove to make this meal vegetarian?".to_owned(),
                turns: turns(targets, "would have to go", rng),
            })
        }
        _ => {
            // Largest single item: purely visual, with a clear margin and a unique class.
            let mut all: Vec<(u64, &Present)> = present
                .iter()
                .flat_map(|p| p.areas.iter().map(move |&a| (a, p)))
                .collect();
            all.sort_by_key(|a| std::cmp::Reverse(a.0));
            let (top, next) = (all.first()?, all.get(1)?);
            if top.1.areas.len() != 1 || (top.0 as f64) < next.0 as f64 * 1.25 {
                return None;
            }
            Some(Qa {
                kind: "largest",
                question: format!("Which is the largest item on the {place}?"),
                turns: turns(vec![top.1], "is the largest", rng),
            })
        }
    }
}

fn targets_plural(present: &[Present], cuisine: &str) -> bool {
    present
        .iter()
        .filter(|p| p.food.cuisine == cuisine)
        .map(|p| p.areas.len())
        .sum::<usize>()
        > 1
}
