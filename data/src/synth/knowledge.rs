//! The synthetic world's knowledge table: what each food is (group, nutrients, cuisine, cooking
//! method, allergens, course) and how it looks (shape, colour, texture, size).
//!
//! Questions are answered from this table plus the picture, so a policy must learn both.

use serde::Serialize;

/// Food group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Meat.
    Meat,
    /// Fish and shellfish.
    Seafood,
    /// Vegetables.
    Vegetable,
    /// Fruit.
    Fruit,
    /// Grains, bread, pasta.
    Grain,
    /// Dairy.
    Dairy,
    /// Sweets.
    Dessert,
    /// Nuts.
    Nut,
    /// Eggs.
    Egg,
    /// Beans and soy.
    Legume,
}

/// How a food is cooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Deep- or pan-fried.
    Fried,
    /// Grilled.
    Grilled,
    /// Baked.
    Baked,
    /// Boiled.
    Boiled,
    /// Steamed.
    Steamed,
    /// Served raw.
    Raw,
}

/// When a food is typically eaten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Course {
    /// Breakfast.
    Breakfast,
    /// Starter.
    Starter,
    /// Main course.
    Main,
    /// Side dish.
    Side,
    /// Dessert.
    Dessert,
    /// Snack.
    Snack,
}

/// Silhouette of a food item, in units of its size (see `render.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Disc.
    Round,
    /// Ellipse.
    Oval,
    /// Rectangle.
    Rect,
    /// Triangle (slice).
    Wedge,
    /// Long thin bar.
    Stick,
    /// Rounded bar.
    Capsule,
    /// Union of a few discs.
    Blob,
    /// Annulus (non-convex: its box centre is off the food).
    Ring,
    /// Crescent (non-convex).
    Crescent,
}

/// Surface pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Texture {
    /// Slight noise.
    Plain,
    /// Dots of a darker colour.
    Speckled,
    /// Parallel bands.
    Striped,
    /// Diagonal char lines.
    Grill,
    /// Darker rim (crust, seaweed).
    Rim,
    /// Coarse golden noise (breading).
    Crumb,
    /// White with a yellow centre.
    Yolk,
}

/// One food of the world.
#[derive(Debug, Clone, Serialize)]
pub struct Food {
    /// Class id in `category_id.txt`.
    pub id: u8,
    /// Class name (singular).
    pub name: &'static str,
    /// Plural used in questions and answers; `None` when the name is a mass noun.
    pub plural: Option<&'static str>,
    /// Food group.
    pub group: Group,
    /// Grams of protein per 100 g.
    pub protein: f32,
    /// Grams of fat per 100 g.
    pub fat: f32,
    /// Grams of sugar per 100 g.
    pub sugar: f32,
    /// Grams of fibre per 100 g.
    pub fibre: f32,
    /// Cuisine.
    pub cuisine: &'static str,
    /// Cooking method.
    pub method: Method,
    /// Allergens it contains.
    pub allergens: &'static [&'static str],
    /// Typical course.
    pub course: Course,
    /// Silhouette.
    pub shape: Shape,
    /// Base colour.
    pub rgb: [u8; 3],
    /// Surface pattern.
    pub texture: Texture,
    /// Typical radius as a fraction of the image's shorter side.
    pub size: f32,
}

/// Allergens questions can ask about.
pub const ALLERGENS: [&str; 7] = [
    "nuts",
    "dairy",
    "gluten",
    "eggs",
    "shellfish",
    "fish",
    "soy",
];

macro_rules! food {
    ($id:expr, $name:expr, $plural:expr, $group:ident, $p:expr, $f:expr, $s:expr, $fi:expr,
     $cuisine:expr, $method:ident, $allergens:expr, $course:ident, $shape:ident, $rgb:expr,
     $texture:ident, $size:expr) => {
        Food {
            id: $id,
            name: $name,
            plural: $plural,
            group: Group::$group,
            protein: $p,
            fat: $f,
            sugar: $s,
            fibre: $fi,
            cuisine: $cuisine,
            method: Method::$method,
            allergens: $allergens,
            course: Course::$course,
            shape: Shape::$shape,
            rgb: $rgb,
            texture: Texture::$texture,
            size: $size,
        }
    };
}

/// The 30 foods. Nutrient values are rounded textbook figures per 100 g; what matters is that
/// they are fixed and consistent, so a question has one right answer.
// One food per line: a table reads better than rustfmt's one-field-per-line layout.
#[rustfmt::skip]
pub const FOODS: [Food; 30] = [
    food!(1, "steak", Some("steaks"), Meat, 26.0, 15.0, 0.0, 0.0, "american", Grilled, &[], Main, Oval, [122, 62, 42], Grill, 0.15),
    food!(2, "chicken breast", Some("chicken breasts"), Meat, 31.0, 3.6, 0.0, 0.0, "american", Grilled, &[], Main, Oval, [222, 182, 132], Grill, 0.13),
    food!(3, "salmon", None, Seafood, 20.0, 13.0, 0.0, 0.0, "japanese", Raw, &["fish"], Main, Rect, [250, 128, 92], Striped, 0.11),
    food!(4, "shrimp", Some("shrimps"), Seafood, 24.0, 0.3, 0.0, 0.0, "chinese", Boiled, &["shellfish"], Main, Crescent, [248, 152, 118], Striped, 0.07),
    food!(5, "fried chicken", None, Meat, 19.0, 15.0, 0.0, 1.0, "american", Fried, &["gluten"], Main, Blob, [200, 128, 48], Crumb, 0.1),
    food!(6, "french fries", None, Vegetable, 3.4, 15.0, 0.3, 3.8, "american", Fried, &[], Side, Stick, [242, 202, 82], Plain, 0.08),
    food!(7, "onion ring", Some("onion rings"), Vegetable, 4.0, 17.0, 5.0, 2.0, "american", Fried, &["gluten"], Side, Ring, [212, 152, 62], Crumb, 0.08),
    food!(8, "rice", None, Grain, 2.7, 0.3, 0.1, 0.4, "chinese", Steamed, &[], Side, Blob, [246, 244, 234], Speckled, 0.13),
    food!(9, "bread", None, Grain, 9.0, 3.2, 5.0, 2.7, "french", Baked, &["gluten"], Side, Rect, [214, 164, 104], Rim, 0.11),
    food!(10, "pasta", None, Grain, 5.0, 1.1, 0.6, 1.8, "italian", Boiled, &["gluten", "eggs"], Main, Blob, [238, 208, 118], Striped, 0.13),
    food!(11, "pizza", Some("pizzas"), Grain, 11.0, 10.0, 3.6, 2.3, "italian", Baked, &["gluten", "dairy"], Main, Wedge, [232, 172, 82], Speckled, 0.15),
    food!(12, "tofu", None, Legume, 8.0, 4.8, 0.6, 0.3, "japanese", Boiled, &["soy"], Side, Rect, [246, 240, 220], Plain, 0.07),
    food!(13, "broccoli", None, Vegetable, 2.8, 0.4, 1.7, 2.6, "chinese", Steamed, &[], Side, Blob, [42, 132, 52], Speckled, 0.08),
    food!(14, "carrot", Some("carrots"), Vegetable, 0.9, 0.2, 4.7, 2.8, "french", Boiled, &[], Side, Stick, [240, 122, 32], Plain, 0.08),
    food!(15, "tomato", Some("tomatoes"), Vegetable, 0.9, 0.2, 2.6, 1.2, "italian", Raw, &[], Starter, Round, [222, 42, 40], Plain, 0.07),
    food!(16, "lettuce", None, Vegetable, 1.4, 0.2, 0.8, 1.3, "french", Raw, &[], Starter, Blob, [122, 202, 82], Striped, 0.12),
    food!(17, "strawberry", Some("strawberries"), Fruit, 0.7, 0.3, 4.9, 2.0, "french", Raw, &[], Dessert, Wedge, [212, 30, 52], Speckled, 0.05),
    food!(18, "banana", Some("bananas"), Fruit, 1.1, 0.3, 12.0, 2.6, "indian", Raw, &[], Breakfast, Crescent, [250, 222, 72], Plain, 0.11),
    food!(19, "orange", Some("oranges"), Fruit, 0.9, 0.1, 9.0, 2.4, "spanish", Raw, &[], Breakfast, Round, [250, 152, 30], Speckled, 0.08),
    food!(20, "cake", Some("cakes"), Dessert, 4.0, 15.0, 35.0, 1.0, "french", Baked, &["gluten", "dairy", "eggs"], Dessert, Wedge, [142, 82, 52], Striped, 0.12),
    food!(21, "ice cream", None, Dessert, 3.5, 11.0, 21.0, 0.7, "italian", Raw, &["dairy"], Dessert, Round, [250, 240, 202], Plain, 0.08),
    food!(22, "cookie", Some("cookies"), Dessert, 5.0, 22.0, 35.0, 2.0, "american", Baked, &["gluten", "nuts", "dairy"], Dessert, Round, [202, 152, 92], Speckled, 0.07),
    food!(23, "donut", Some("donuts"), Dessert, 5.0, 25.0, 22.0, 1.5, "american", Fried, &["gluten", "eggs", "dairy"], Dessert, Ring, [232, 132, 172], Speckled, 0.09),
    food!(24, "almond", Some("almonds"), Nut, 21.0, 49.0, 4.4, 12.5, "spanish", Raw, &["nuts"], Snack, Oval, [182, 122, 72], Plain, 0.035),
    food!(25, "walnut", Some("walnuts"), Nut, 15.0, 65.0, 2.6, 6.7, "french", Raw, &["nuts"], Snack, Blob, [152, 102, 62], Crumb, 0.04),
    food!(26, "cheese", None, Dairy, 25.0, 33.0, 0.5, 0.0, "french", Raw, &["dairy"], Starter, Wedge, [250, 212, 82], Speckled, 0.09),
    food!(27, "egg", Some("eggs"), Egg, 13.0, 11.0, 1.1, 0.0, "american", Fried, &["eggs"], Breakfast, Oval, [250, 250, 244], Yolk, 0.1),
    food!(28, "sausage", Some("sausages"), Meat, 12.0, 27.0, 1.0, 0.0, "german", Grilled, &[], Main, Capsule, [172, 92, 62], Grill, 0.1),
    food!(29, "sushi", None, Seafood, 6.0, 1.0, 7.0, 0.5, "japanese", Raw, &["fish", "soy"], Main, Round, [244, 244, 240], Rim, 0.06),
    food!(30, "dumpling", Some("dumplings"), Grain, 7.0, 6.0, 2.0, 1.5, "chinese", Steamed, &["gluten", "soy"], Starter, Crescent, [240, 230, 212], Plain, 0.07),
];

/// Class id of the "other ingredients" class (sauce smears), excluded from targets.
pub const OTHER_INGREDIENTS: u8 = 103;

/// The food with class id `id`.
pub fn food(id: u8) -> Option<&'static Food> {
    FOODS.iter().find(|f| f.id == id)
}

/// `category_id.txt` for the synthetic world, in FoodSeg103's format.
pub fn category_id_txt() -> String {
    let mut s = String::from("0\tbackground\n");
    for f in &FOODS {
        s.push_str(&format!("{}\t{}\n", f.id, f.name));
    }
    s.push_str(&format!("{OTHER_INGREDIENTS}\tother ingredients\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foodreasonseg::{Categories, surface_forms};

    #[test]
    fn ids_unique_and_plurals_resolve_by_the_reader_rules() {
        let cats = Categories::parse(&category_id_txt(), std::path::Path::new("c")).unwrap();
        for (i, f) in FOODS.iter().enumerate() {
            assert_eq!(usize::from(f.id), i + 1);
            assert_eq!(cats.resolve(f.name), Some(f.id));
            if let Some(p) = f.plural {
                assert!(surface_forms(f.name).contains(&p.to_owned()), "{p}");
                assert_eq!(cats.resolve(p), Some(f.id));
            }
        }
    }
}
