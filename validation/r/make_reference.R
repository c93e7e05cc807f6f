# make_reference.R -- reference numbers from R / lme4 for the bayeslmm test-suite.
#
# How to run (from the repository root):
#
#     Rscript validation/r/make_reference.R
#
# R is NOT a dependency of bayeslmm or of its tests: this script is run by
# hand, and its output is committed as JSON:
#
#     bayeslmm/data/grouseticks.csv   (lme4::grouseticks, + cHEIGHT = HEIGHT - mean(HEIGHT))
#     bayeslmm/data/cake.csv          (lme4::cake)
#     tests/reference/glmer.json      (GLMMs: glmer, glmer.nb, glmmTMB)
#     tests/reference/lmer_extra.json (lmerTest anova / summary, emmeans, LRTs,
#                                      predict, contrasts, singular fits)
#     tests/reference/lmer_workflow.json (pymer4 workflow: Type III with a
#                                      covariate interaction, emmeans adjustments,
#                                      the course's LRT pairs, releveled factors)
#
# Every model is fitted to the CSV files in bayeslmm/data/ (read back from
# disk), so the numbers refer to exactly the data the Python package ships.
#
# Produced with (Debian 12 packages r-base-core, r-cran-*):
#     R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1-31, lmerTest 3.1-3,
#     emmeans 1.8.4-1, glmmTMB 1.1.5 (TMB 1.9.2), Matrix 1.5-3, MASS 7.3-58.2,
#     jsonlite 1.8.4
# The exact versions are recorded in each JSON file under "versions".
#
# Install (Debian):
#     apt-get install -y --no-install-recommends r-base-core r-cran-lme4 \
#         r-cran-lmertest r-cran-emmeans r-cran-glmmtmb r-cran-jsonlite r-cran-mass
#
# Numbers are written with the shortest decimal representation that
# round-trips to the same double (15-17 significant digits): jsonlite's
# digits = NA only gives 15 significant digits, so numbers are formatted here
# and passed to jsonlite verbatim.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)   # masks lme4::lmer; lme4::lmer is used explicitly where wanted
  library(emmeans)
  library(glmmTMB)
  library(MASS)
  library(jsonlite)
})

if (!file.exists("bayeslmm/data/cbpp.csv"))
  stop("run from the repository root: Rscript validation/r/make_reference.R")

data_dir <- "bayeslmm/data"
out_dir <- "tests/reference"
dir.create(out_dir, showWarnings = FALSE, recursive = TRUE)

## ---------------------------------------------------------------------------
## helpers
## ---------------------------------------------------------------------------

versions <- function() {
  pk <- c("lme4", "lmerTest", "emmeans", "glmmTMB", "TMB", "Matrix", "MASS",
          "jsonlite", "nloptr", "minqa")
  si <- sessionInfo()
  list(R = R.version.string,
       platform = si$platform,
       running = si$running,
       BLAS = si$BLAS, LAPACK = si$LAPACK,
       packages = as.list(vapply(pk, function(p) as.character(packageVersion(p)), "")),
       generated = format(Sys.time(), "%Y-%m-%d", tz = "UTC"),
       script = "validation/r/make_reference.R")
}

## shortest round-trip decimal for a double
fmt_num <- function(v) vapply(v, function(x) {
  if (is.na(x)) return("null")
  if (!is.finite(x)) return(if (x > 0) "\"Inf\"" else "\"-Inf\"")
  for (d in 15:17) {
    s <- sprintf("%.*g", d, x)
    if (as.numeric(s) == x) return(s)
  }
  s
}, "")

## data.frame -> list of rows (named lists); row names dropped unless keyed
df_rows <- function(df) {
  df <- as.data.frame(df)
  for (j in seq_along(df)) if (is.factor(df[[j]])) df[[j]] <- as.character(df[[j]])
  lapply(seq_len(nrow(df)), function(i) as.list(df[i, , drop = FALSE]))
}
## data.frame / matrix -> named list keyed by row name, each a named list
df_keyed <- function(df) {
  df <- as.data.frame(df)
  for (j in seq_along(df)) if (is.factor(df[[j]])) df[[j]] <- as.character(df[[j]])
  out <- lapply(seq_len(nrow(df)), function(i) {
    r <- as.list(df[i, , drop = FALSE]); lapply(r, unname)
  })
  names(out) <- rownames(df)
  out
}
named <- function(v) { v <- as.list(v); lapply(v, unname) }

prep <- function(x) {
  if (is.data.frame(x)) return(prep(df_rows(x)))
  if (is.list(x)) return(lapply(x, prep))
  if (is.factor(x)) x <- as.character(x)
  if (inherits(x, "AsIs") && is.character(x)) return(x)
  if (is.matrix(x) && is.numeric(x))
    return(structure(paste0("[", paste(apply(x, 1, function(r)
      paste0("[", paste(fmt_num(r), collapse = ","), "]")), collapse = ","), "]"),
      class = "json"))
  if (is.numeric(x) && !is.null(names(x))) return(prep(named(x)))
  if (is.numeric(x)) {
    s <- fmt_num(unname(x))
    if (length(x) == 1) return(structure(s, class = "json"))
    return(structure(paste0("[", paste(s, collapse = ","), "]"), class = "json"))
  }
  x
}

write_ref <- function(x, file) {
  x <- c(list(versions = versions()), x)
  txt <- toJSON(prep(x), json_verbatim = TRUE, auto_unbox = TRUE,
                pretty = TRUE, na = "null", null = "null")
  writeLines(txt, file.path(out_dir, file))
  cat("wrote", file.path(out_dir, file), "\n")
}

## evaluate expr, collecting (and muffling) messages and warnings
capture <- function(expr) {
  msgs <- character(); warns <- character()
  val <- withCallingHandlers(expr,
    message = function(m) { msgs <<- c(msgs, sub("\n$", "", conditionMessage(m)))
                            invokeRestart("muffleMessage") },
    warning = function(w) { warns <<- c(warns, conditionMessage(w))
                            invokeRestart("muffleWarning") })
  list(value = val, messages = I(msgs), warnings = I(warns))
}

## VarCorr -> SDs keyed "group:term", correlations keyed "group:term1:term2"
vc_info <- function(vc) {
  sds <- list(); cors <- list()
  for (g in names(vc)) {
    s <- attr(vc[[g]], "stddev")
    for (n in names(s)) sds[[paste0(g, ":", n)]] <- unname(s[[n]])
    cr <- attr(vc[[g]], "correlation")
    if (!is.null(cr) && nrow(cr) > 1)
      for (i in 1:(nrow(cr) - 1)) for (j in (i + 1):nrow(cr))
        cors[[paste0(g, ":", rownames(cr)[i], ":", colnames(cr)[j])]] <- cr[i, j]
  }
  res <- list(sd = sds, cor = if (length(cors)) cors else structure(list(), names = character()))
  sc <- attr(vc, "sc")
  if (!is.null(sc) && !is.na(sc)) res$sigma <- sc
  res
}

ftext <- function(f) paste(deparse(f, width.cutoff = 500L), collapse = " ")

## full description of a glmerMod fit
glmer_info <- function(fit, formula_text, note = NULL) {
  m <- fit$value
  co <- coef(summary(m))
  fam <- family(m)
  ll <- logLik(m)
  re <- ranef(m, condVar = TRUE)
  modes <- list(); modes_sd <- list()
  for (g in names(re)) {
    if (nrow(re[[g]]) > 400) next
    pv <- attr(re[[g]], "postVar")
    modes[[g]] <- list(); modes_sd[[g]] <- list()
    for (k in seq_along(re[[g]])) {
      cn <- names(re[[g]])[k]
      modes[[g]][[cn]] <- named(setNames(re[[g]][[k]], rownames(re[[g]])))
      modes_sd[[g]][[cn]] <- named(setNames(sqrt(pv[k, k, ]), rownames(re[[g]])))
    }
  }
  vc <- vc_info(VarCorr(m))
  out <- list(
    formula = formula_text,
    call = ftext(getCall(m)),
    family = fam$family, link = fam$link,
    nAGQ = unname(m@devcomp$dims[["nAGQ"]]),
    fixef = named(fixef(m)),
    SE = named(co[, "Std. Error"]),
    z = named(co[, "z value"]),
    p = named(co[, "Pr(>|z|)"]),
    vcov = as.matrix(vcov(m)), vcov_names = colnames(vcov(m)),
    theta = named(getME(m, "theta")),
    sd = vc$sd, cor = vc$cor,
    logLik = as.numeric(ll), df_logLik = attr(ll, "df"),
    AIC = AIC(m), BIC = BIC(m),
    deviance = deviance(m), minus2logLik = -2 * as.numeric(ll),
    df_resid = df.residual(m), nobs = nobs(m),
    ngrps = named(ngrps(m)),
    isSingular = isSingular(m),
    ranef = modes, ranef_condsd = modes_sd,
    optimizer_messages = I(as.character(m@optinfo$conv$lme4$messages)),
    fit_messages = fit$messages, fit_warnings = fit$warnings)
  if (nobs(m) <= 500) out$fitted <- unname(fitted(m))
  if (out$nAGQ > 1) {
    ## lme4 (1.1-31) reports logLik for nAGQ > 1 relative to the saturated model
    ## (sum of deviance residuals), not the full binomial/Poisson log-likelihood
    ## that it reports for nAGQ = 1 (Laplace).  Full-scale value = logLik + saturated.
    y <- getME(m, "y"); w <- weights(m, type = "prior")
    sat <- if (fam$family == "binomial") sum(dbinom(round(w * y), round(w), y, log = TRUE))
           else if (fam$family == "poisson") sum(dpois(y, y, log = TRUE)) else NA_real_
    out$logLik_saturated <- sat
    out$logLik_full_scale <- as.numeric(ll) + sat
    out$logLik_note <- paste("for nAGQ > 1 lme4's logLik/AIC/BIC omit the saturated log-likelihood;",
                             "logLik_full_scale = logLik + logLik_saturated is comparable with a Laplace fit")
  }
  if (!is.null(note)) out$note <- note
  out
}

## ---------------------------------------------------------------------------
## 0. export data sets, then read everything back from CSV
## ---------------------------------------------------------------------------

gt <- lme4::grouseticks
gt$cHEIGHT <- gt$HEIGHT - mean(gt$HEIGHT)
write.csv(gt, file.path(data_dir, "grouseticks.csv"), row.names = FALSE)
write.csv(lme4::cake, file.path(data_dir, "cake.csv"), row.names = FALSE)

rd <- function(f) read.csv(file.path(data_dir, f), stringsAsFactors = FALSE)

cbpp <- rd("cbpp.csv")
cbpp$herd <- factor(cbpp$herd, levels = sort(unique(cbpp$herd)))
cbpp$period <- factor(cbpp$period, levels = sort(unique(cbpp$period)))
stopifnot(nrow(cbpp) == 56, nlevels(cbpp$herd) == 15,
          all(cbpp$incidence == lme4::cbpp$incidence))

grouse <- rd("grouseticks.csv")
for (v in c("INDEX", "BROOD", "YEAR", "LOCATION"))
  grouse[[v]] <- factor(grouse[[v]], levels = sort(unique(grouse[[v]])))
stopifnot(nrow(grouse) == 403, nlevels(grouse$YEAR) == 3,
          isTRUE(all.equal(grouse$cHEIGHT, lme4::grouseticks$cHEIGHT)))

verb <- rd("VerbAgg.csv")
verb$r2 <- factor(verb$r2, levels = c("N", "Y"))   # glm convention: 2nd level = success
for (v in c("Gender", "btype", "situ", "item", "id", "mode", "resp"))
  verb[[v]] <- factor(verb[[v]], levels = sort(unique(verb[[v]])))
stopifnot(nrow(verb) == 7584, all(as.character(verb$r2) == as.character(lme4::VerbAgg$r2)))

sleep <- rd("sleepstudy.csv")
sleep$Subject <- factor(sleep$Subject, levels = sort(unique(sleep$Subject)))
stopifnot(nrow(sleep) == 180)

cake0 <- rd("cake.csv")
cake0$recipe <- factor(cake0$recipe, levels = c("A", "B", "C"))
cake0$replicate <- factor(cake0$replicate, levels = 1:15)
stopifnot(nrow(cake0) == 270, all(cake0$angle == lme4::cake$angle))
temp_levels <- as.character(sort(unique(cake0$temperature)))   # 175 < ... < 225
cake_unord <- cake0
cake_unord$temperature <- factor(as.character(cake0$temperature), levels = temp_levels)
cake_ord <- cake0
cake_ord$temperature <- factor(as.character(cake0$temperature), levels = temp_levels,
                               ordered = TRUE)

## ---------------------------------------------------------------------------
## A. GLMMs -> glmer.json
## ---------------------------------------------------------------------------
cat("fitting GLMMs ...\n")
G <- list()

f <- cbind(incidence, size - incidence) ~ period + (1 | herd)
G$cbpp_logit <- glmer_info(capture(glmer(f, family = binomial, data = cbpp)), ftext(f))
G$cbpp_logit_agq25 <- glmer_info(capture(glmer(f, family = binomial, data = cbpp, nAGQ = 25)),
                                 ftext(f))
## likelihood-ratio test of period, as anova(m0, m1) on two Laplace fits
null_fit <- glmer(cbind(incidence, size - incidence) ~ 1 + (1 | herd), family = binomial, data = cbpp)
lrt_table <- anova(null_fit, glmer(f, family = binomial, data = cbpp))
G$cbpp_lrt <- list(formula_null = "cbind(incidence, size - incidence) ~ 1 + (1 | herd)",
                   logLik_null = as.numeric(logLik(null_fit)), Chisq = lrt_table$Chisq[2],
                   Df = lrt_table$Df[2], p = lrt_table[["Pr(>Chisq)"]][2])
G$cbpp_probit <- glmer_info(capture(glmer(f, family = binomial(link = "probit"), data = cbpp)),
                            ftext(f))
G$cbpp_cloglog <- glmer_info(capture(glmer(f, family = binomial(link = "cloglog"), data = cbpp)),
                             ftext(f))

fw <- incidence / size ~ period + (1 | herd)
G$cbpp_prop_weights <- glmer_info(
  capture(glmer(fw, weights = size, family = binomial, data = cbpp)), ftext(fw),
  note = "weights = size; should equal cbpp_logit")
G$cbpp_prop_weights$equals_cbpp_logit <- list(
  fixef_maxabsdiff = max(abs(unlist(G$cbpp_prop_weights$fixef) - unlist(G$cbpp_logit$fixef))),
  logLik_diff = G$cbpp_prop_weights$logLik - G$cbpp_logit$logLik)

cbpp$obs <- factor(seq_len(nrow(cbpp)))
fo <- cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | obs)
G$cbpp_olre <- glmer_info(capture(glmer(fo, family = binomial, data = cbpp)), ftext(fo),
                          note = "obs = factor(1:56)")

fp <- incidence ~ period + offset(log(size)) + (1 | herd)
G$cbpp_poisson_offset <- glmer_info(capture(glmer(fp, family = poisson, data = cbpp)), ftext(fp))

fg <- TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)
G$grouse_poisson <- glmer_info(capture(glmer(fg, family = poisson, data = grouse)), ftext(fg),
                               note = "ranef for INDEX (403 levels) omitted (> 400 levels)")

fnb <- TICKS ~ YEAR + cHEIGHT + (1 | LOCATION)
nbfit <- capture(glmer.nb(fnb, data = grouse))
G$grouse_nb <- glmer_info(nbfit, ftext(fnb))
G$grouse_nb$nb_theta <- unname(getME(nbfit$value, "glmer.nb.theta"))
G$grouse_nb$family_text <- family(nbfit$value)$family

tmbfit <- capture(glmmTMB(fnb, family = nbinom2, data = grouse))
tm <- tmbfit$value
tco <- summary(tm)$coefficients$cond
tll <- logLik(tm)
tre <- ranef(tm)$cond$LOCATION
G$grouse_nb_tmb <- list(
  formula = ftext(fnb), family = "nbinom2", link = "log",
  fixef = named(fixef(tm)$cond),
  SE = named(tco[, "Std. Error"]), z = named(tco[, "z value"]), p = named(tco[, "Pr(>|z|)"]),
  sd = vc_info(VarCorr(tm)$cond)$sd,
  sigma = sigma(tm),
  sigma_note = "glmmTMB sigma() for nbinom2 is the NB size parameter (var = mu + mu^2/sigma)",
  logLik = as.numeric(tll), df_logLik = attr(tll, "df"), AIC = AIC(tm), BIC = BIC(tm),
  nobs = nobs(tm),
  ranef = list(LOCATION = list(`(Intercept)` = named(setNames(tre[[1]], rownames(tre))))),
  fit_messages = tmbfit$messages, fit_warnings = tmbfit$warnings)

fv <- r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)
G$verbagg <- glmer_info(capture(glmer(fv, family = binomial, data = verb)), ftext(fv),
                        note = "r2 factor levels c('N','Y'): success (1) is r2 == 'Y'")
## check: the same model with an explicit 0/1 response
verb$y01 <- as.integer(verb$r2 == "Y")
chk <- glmer(y01 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item),
             family = binomial, data = verb)
G$verbagg$success_level <- levels(verb$r2)[2]
G$verbagg$success_check_fixef_maxabsdiff <- max(abs(fixef(chk) - unlist(G$verbagg$fixef)))
## lme4's SEs come from deriv12() with steps of 1e-4, where the deviance's rounding noise shows
## (about 4e-4 relative on the intercept's SE); the same Hessian with steps of 1e-3 is stable
vfit <- glmer(fv, family = binomial, data = verb)
vdev <- glmer(fv, family = binomial, data = verb, devFunOnly = TRUE)   # stage-2 deviance, lme4's lp0
vpar <- c(getME(vfit, "theta"), fixef(vfit))
vhess <- lme4:::deriv12(vdev, vpar, delta = 1e-3)$Hessian
G$verbagg$SE_hessian_step_1e3 <- named(setNames(sqrt(diag(2 * solve(vhess)))[-seq_along(getME(vfit, "theta"))],
                                                names(fixef(vfit))))

fva <- r2 ~ Anger + Gender + btype + situ + (1 | id)
G$verbagg_agq <- glmer_info(capture(glmer(fva, family = binomial, data = verb, nAGQ = 8)),
                            ftext(fva))

cbpp$t <- as.numeric(cbpp$period)
fs <- cbind(incidence, size - incidence) ~ t + (t | herd)
G$cbpp_slope <- glmer_info(capture(glmer(fs, family = binomial, data = cbpp)), ftext(fs),
                           note = "t = as.numeric(period), values 1..4")

write_ref(c(list(isSingular_default_tol = formals(lme4::isSingular)$tol,
                 notes = c("Laplace (nAGQ = 1) unless nAGQ says otherwise; default glmerControl",
                           "sd keyed 'group:term'; cor keyed 'group:term1:term2'",
                           "fitted = fitted(m) on the response scale (only for n <= 500)",
                           "ranef = conditional modes, ranef_condsd = sqrt(diag condVar); factors with <= 400 levels")),
            G), "glmer.json")

## ---------------------------------------------------------------------------
## B. lmer extras -> lmer_extra.json
## ---------------------------------------------------------------------------
cat("lmer extras ...\n")
L <- list(isSingular_default_tol = formals(lme4::isSingular)$tol)

anova_rows <- function(a) {
  a <- as.data.frame(a)
  df_keyed(a)
}
coef_rows <- function(m) df_keyed(as.data.frame(coef(summary(m))))
lmer_basic <- function(m) {
  list(formula = ftext(formula(m)), REML = isREML(m),
       logLik = as.numeric(logLik(m)), sd = vc_info(VarCorr(m))$sd,
       cor = vc_info(VarCorr(m))$cor, sigma = sigma(m), theta = named(getME(m, "theta")),
       isSingular = isSingular(m))
}

## 1. lmerTest anova type III (Satterthwaite) + summary coefficients
m1a <- lmerTest::lmer(angle ~ recipe * temperature + (1 | recipe:replicate), data = cake_unord)
m1a_sum <- lmerTest::lmer(angle ~ recipe * temperature + (1 | recipe:replicate), data = cake_unord,
                          contrasts = list(recipe = "contr.sum", temperature = "contr.sum"))
m1b <- lmerTest::lmer(Reaction ~ Days + (Days | Subject), data = sleep)
m1c <- lmerTest::lmer(angle ~ recipe + temp + (1 | recipe:replicate), data = cake_unord)

L$anova_type3 <- list(
  notes = "lmerTest::anova(m, type = 3), ddf = 'Satterthwaite' (default); summary(m)$coefficients",
  cake_interaction = c(lmer_basic(m1a), list(
    data_note = "temperature unordered factor, levels 175,185,...,225; treatment contrasts",
    anova = anova_rows(anova(m1a, type = 3)),
    anova_contr_sum = anova_rows(anova(m1a_sum, type = 3)),
    coefficients = coef_rows(m1a),
    coefficients_contr_sum = coef_rows(m1a_sum))),
  sleepstudy = c(lmer_basic(m1b), list(
    anova = anova_rows(anova(m1b, type = 3)), coefficients = coef_rows(m1b))),
  cake_additive = c(lmer_basic(m1c), list(
    data_note = "temp numeric",
    anova = anova_rows(anova(m1c, type = 3)), coefficients = coef_rows(m1c))))

## 2. emmeans on m1a (Satterthwaite df)
emm_tab <- function(s) {
  d <- as.data.frame(s)
  list(rows = df_rows(d), mesg = I(as.character(attr(s, "mesg"))))
}
e1c <- capture(emmeans(m1a, pairwise ~ recipe, adjust = "tukey", lmer.df = "satterthwaite"))
e1 <- e1c$value
e1_emm_s <- summary(e1$emmeans)
contr_by_adj <- list()
for (adj in c("tukey", "none", "bonferroni", "holm"))
  contr_by_adj[[adj]] <- emm_tab(summary(e1$contrasts, adjust = adj))
e1_ci <- emm_tab(confint(e1$contrasts, adjust = "tukey"))

## equal weights check: mean over temperature of the recipe x temperature cell predictions
rg <- as.data.frame(summary(ref_grid(m1a, lmer.df = "satterthwaite")))
eq_w <- tapply(rg$prediction, rg$recipe, mean)

e2 <- emmeans(m1a, pairwise ~ recipe | temperature, adjust = "tukey", lmer.df = "satterthwaite")
e3c <- capture(emmeans(m1a, pairwise ~ temperature, adjust = "tukey", lmer.df = "satterthwaite"))
e3 <- e3c$value

L$emmeans <- list(
  model = "lmer(angle ~ recipe * temperature + (1 | recipe:replicate), cake), temperature unordered",
  options = "emmeans(..., lmer.df = 'satterthwaite'); weights = default ('equal'); level 0.95",
  recipe = list(
    emmeans = emm_tab(e1_emm_s),
    contrasts = contr_by_adj,
    contrasts_confint_tukey = e1_ci,
    averaged_over = I(grep("averaged over", attr(e1_emm_s, "mesg"), value = TRUE)),
    emmeans_call_messages = e1c$messages,
    equal_weight_cellmean_average = named(eq_w)),
  recipe_by_temperature = list(emmeans = emm_tab(summary(e2$emmeans)),
                               contrasts = emm_tab(summary(e2$contrasts))),
  temperature = list(emmeans = emm_tab(summary(e3$emmeans)),
                     contrasts = emm_tab(summary(e3$contrasts)),
                     emmeans_call_messages = e3c$messages))

## 3. likelihood-ratio tests (refit with ML)
s1 <- lme4::lmer(Reaction ~ 1 + (1 | Subject), data = sleep)
s2 <- lme4::lmer(Reaction ~ Days + (1 | Subject), data = sleep)
s3 <- lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleep)
lrt <- anova(s1, s2, s3, refit = TRUE)
L$lrt_sleepstudy <- list(
  models = list(s1 = "Reaction ~ 1 + (1 | Subject)", s2 = "Reaction ~ Days + (1 | Subject)",
                s3 = "Reaction ~ Days + (Days | Subject)"),
  note = "anova(s1, s2, s3, refit = TRUE): all refitted by ML; Chisq of each row vs the row above",
  table = anova_rows(lrt))

## 4. predict
newd <- data.frame(Days = c(0, 5, 9, 0, 5),
                   Subject = c("308", "308", "372", "new1", "new1"))
L$predict_sleepstudy <- list(
  model = "lmer(Reaction ~ Days + (Days | Subject), sleepstudy), REML",
  newdata = newd,
  allow_new_levels = unname(predict(s3, newdata = newd, allow.new.levels = TRUE)),
  re_form_NA = unname(predict(s3, newdata = newd, re.form = NA)),
  fixef = named(fixef(s3)),
  ranef_308_372 = list(`308` = named(ranef(s3)$Subject["308", ]),
                       `372` = named(ranef(s3)$Subject["372", ])))

## 5. polynomial contrasts (ordered temperature)
mp <- lmerTest::lmer(angle ~ temperature + (1 | recipe:replicate), data = cake_ord)
L$poly_contrasts <- c(lmer_basic(mp), list(
  data_note = "temperature ORDERED factor (contr.poly), levels 175 < ... < 225",
  contrast_matrix = unname(contr.poly(6)),
  contrast_colnames = colnames(contrasts(cake_ord$temperature)),
  coef_names = names(fixef(mp)),
  coefficients = coef_rows(mp)))

## 6. custom contrasts
cake_cc <- cake_unord
C <- cbind(AvsB = c(1, -1, 0), ABvsC = c(1, 1, -2))
rownames(C) <- c("A", "B", "C")
contrasts(cake_cc$recipe) <- C
mc <- lmerTest::lmer(angle ~ recipe + (1 | recipe:replicate), data = cake_cc)
Hm <- solve(cbind(`(Intercept)` = 1, C))   # rows: what each coefficient estimates in cell means
L$custom_contrasts <- c(lmer_basic(mc), list(
  contrast_matrix = unname(C), contrast_rownames = rownames(C), contrast_colnames = colnames(C),
  contrast_note = paste("contrasts(recipe) <- cbind(AvsB = c(1,-1,0), ABvsC = c(1,1,-2)) (unscaled);",
                        "coefficient k estimates row k of solve(cbind(1, C)) applied to the recipe means",
                        "(i.e. (muA-muB)/2 and ((muA+muB)/2 - muC)/3)"),
  hypothesis_matrix = unname(Hm), hypothesis_rownames = c("(Intercept)", colnames(C)),
  coef_names = names(fixef(mc)),
  coefficients = coef_rows(mc)))

## 7. singular fits
sing <- function(expr_fit, desc, extra = list()) {
  m <- expr_fit$value
  c(list(description = desc), lmer_basic(m),
    list(messages = expr_fit$messages, warnings = expr_fit$warnings), extra)
}
sg <- list()
cfit <- capture(lme4::lmer(angle ~ recipe + (1 | recipe), data = cake_unord))
cdev <- lme4::lmer(angle ~ recipe + (1 | recipe), data = cake_unord, devFunOnly = TRUE)
cth <- c(0, 1e-3, 0.01, 0.1, 1, 10)
sg$cake_recipe_fixed_and_grouping <- sing(cfit,
  "lmer(angle ~ recipe + (1 | recipe), cake)",
  list(note = paste("NOT flagged singular by lme4: the recipe intercepts are confounded with",
                    "the fixed recipe effects, so the REML criterion is flat in theta and the",
                    "optimizer stops at an arbitrary theta"),
       reml_criterion_theta = cth,
       reml_criterion = vapply(cth, cdev, 0)))
sleep3 <- sleep[sleep$Subject %in% c(308, 309, 310), ]
sleep3$Subject <- droplevels(sleep3$Subject)
sg$sleepstudy_3subjects <- sing(
  capture(lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleep3)),
  "lmer(Reaction ~ Days + (Days | Subject), sleepstudy[Subject %in% c(308, 309, 310), ])")
ds2 <- lme4::Dyestuff2
sg$Dyestuff2 <- sing(
  capture(lme4::lmer(Yield ~ 1 + (1 | Batch), data = ds2)),
  "lmer(Yield ~ 1 + (1 | Batch), lme4::Dyestuff2) (data included here: not in bayeslmm/data)",
  list(data = list(Batch = as.character(ds2$Batch), Yield = ds2$Yield)))
sg$sleepstudy_days_grouping <- sing(
  capture(lme4::lmer(Reaction ~ Days + (1 | Subject) + (1 | Days), data = sleep)),
  "lmer(Reaction ~ Days + (1 | Subject) + (1 | Days), sleepstudy) (Days numeric as fixed, grouping factor too)")
sg$cbpp_slope_glmer <- list(description = "glmer.json cbpp_slope",
                            isSingular = G$cbpp_slope$isSingular,
                            messages = G$cbpp_slope$fit_messages)
L$singular <- c(list(tol = formals(lme4::isSingular)$tol,
                     message_text = unique(unlist(lapply(sg, `[[`, "messages")))), sg)

write_ref(L, "lmer_extra.json")

## ---------------------------------------------------------------------------
## C. pymer4 workflow extras -> lmer_workflow.json
##    (Type III with a factor x covariate interaction, emmeans at the covariate
##     mean, p-value and interval adjustments, the course's LRT pairs, releveled
##     treatment coding)
## ---------------------------------------------------------------------------
cat("workflow extras ...\n")
W <- list()

mx <- lmerTest::lmer(angle ~ recipe * temp + (1 | recipe:replicate), data = cake_unord)
ex <- emmeans(mx, pairwise ~ recipe, adjust = "tukey", lmer.df = "satterthwaite")
W$factor_by_covariate <- c(lmer_basic(mx), list(
  data_note = "temp numeric, recipe treatment contrasts",
  anova = anova_rows(anova(mx, type = 3)),
  coefficients = coef_rows(mx),
  emmeans = emm_tab(summary(ex$emmeans)),
  contrasts = emm_tab(summary(ex$contrasts)),
  temp_mean = mean(cake_unord$temp)))

adj <- list()
for (a in c("tukey", "none", "bonferroni", "holm", "sidak", "fdr")) {
  adj[[a]] <- list(p = emm_tab(summary(e3$contrasts, adjust = a)),
                   ci = emm_tab(confint(e3$contrasts, adjust = a)))
}
W$temperature_adjustments <- c(list(
  model = "lmer(angle ~ recipe * temperature + (1 | recipe:replicate), cake), temperature unordered",
  call = "emmeans(m, pairwise ~ temperature, lmer.df = 'satterthwaite'); summary / confint with adjust = each"),
  adj)

sl0 <- lme4::lmer(Reaction ~ Days + (0 + Days | Subject), data = sleep)
s3b <- lme4::lmer(Reaction ~ Days + (Days | Subject), data = sleep)
W$lrt_slopes <- list(
  models = list(a = "Reaction ~ Days + (0 + Days | Subject)", b = "Reaction ~ Days + (Days | Subject)"),
  note = "anova(a, b, refit = TRUE)",
  table = anova_rows(anova(sl0, s3b, refit = TRUE)))

cake_rl <- cake_unord
cake_rl$recipe <- relevel(cake_rl$recipe, ref = "B")
mr <- lmerTest::lmer(angle ~ recipe + temperature + (1 | recipe:replicate), data = cake_rl)
W$releveled <- c(lmer_basic(mr), list(
  data_note = "recipe levels B, A, C (reference B), temperature unordered",
  coef_names = names(fixef(mr)),
  coefficients = coef_rows(mr),
  anova = anova_rows(anova(mr, type = 3))))

write_ref(W, "lmer_workflow.json")

## ---------------------------------------------------------------------------
## sanity checks against published values
## ---------------------------------------------------------------------------
chkv <- function(label, got, want, tol) {
  ok <- abs(got - want) <= tol
  cat(sprintf("%-40s got %.8f  want %.8f  %s\n", label, got, want, if (ok) "OK" else "MISMATCH"))
}
chkv("cbpp (Intercept)", G$cbpp_logit$fixef[["(Intercept)"]], -1.398343, 5e-6)
chkv("cbpp logLik", G$cbpp_logit$logLik, -92.02657, 5e-5)
chkv("verbagg (Intercept)", G$verbagg$fixef[["(Intercept)"]], 0.19924746, 5e-5)
chkv("verbagg id SD", G$verbagg$sd[["id:(Intercept)"]], 1.3395329, 5e-5)
chkv("verbagg item SD", G$verbagg$sd[["item:(Intercept)"]], 0.4952398, 5e-5)
chkv("LRT s1 vs s2 Chisq", lrt$Chisq[2], 116.46, 0.005)
chkv("LRT s2 vs s3 Chisq", lrt$Chisq[3], 42.14, 0.005)
chkv("LRT (0+Days|S) vs (Days|S) Chisq", W$lrt_slopes$table[[2]]$Chisq, 22.14, 0.005)
